// Whole-sequence recurrences for training on CPU: one op runs all T steps of one GRU or LSTM layer.
//
// Only the sequential part lives here: h_{t-1} U + b and the gate maths, forward and backward (plus the input
// bias and its gradient). The input projection x W of every step and the weight gradients are single large
// matmuls that TensorFlow runs around the op (trainer/native.py), so each op call does T small matmuls and no
// per-step graph ops. For narrow layers (kernel_grad, trainer/native.py decides) the backward op also sums U's
// gradient Σ_t h_{t-1}ᵀ d(h_{t-1} U)_t itself, each step while both factors are in cache: at 32–64 units that
// beats the large matmul, whose [T·B, H] × [T·B, G·H] shape with a short side runs far below the CPU's peak.
// DeepRnnLookupGrad is the first layer's row lookup's gradient, DeepRnnSoftmaxCrossEntropy the training loss
// with its gradient (see there).
// Batch rows are independent through time, so the batch is split across the intra-op threads and each
// thread runs its rows through the whole sequence without synchronising.
//
// Maths and weight layout are Keras's: GRUCell(reset_after=True), gates z, r, h; LSTMCell, gates i, f, c, o.
// Training only: exported SavedModels never contain these ops (trainer/generate.py uses standard ops).
//
// With the attribute bf16 (mixed precision on a CPU with AVX512_BF16) the recurrent products h_{t-1} U and
// their backward counterparts round both factors to bfloat16 and accumulate in float32 (vdpbf16ps), about
// twice float32's rate; states, gates and everything else stay float32. The ops' type attribute T = bfloat16
// takes the input projections xp and gives their gradients dxp (and the GRU's dhp) in bfloat16, as the large
// TensorFlow matmuls around the op produce and consume them: the op converts each step's rows, which saves the
// casts and the bias add that would otherwise be whole passes over [T, B, G] tensors; the input bias is added and
// its gradient summed (float32) inside the op for the same reason. Compiling with
// -DDEEP_RNN_EIGEN_PRODUCTS runs the float32 products through Eigen instead of the AVX-512 microkernel
// (for A/B timing; also what CPUs without AVX-512 get). On CPUs with AMX-BF16 the bf16 products run on the tile
// unit (see "AMX tiles" below).
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif
#if defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/util/work_sharder.h"
#include "unsupported/Eigen/CXX11/Tensor"

namespace deep_rnn {

using tensorflow::bfloat16;
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
using RowVector = Eigen::Matrix<float, 1, Eigen::Dynamic>;
using RowVectorMap = Eigen::Map<const RowVector>;

// σ(x) = (1 + tanh(x / 2)) / 2: Eigen's vectorised tanh is several times faster than its logistic here.
template <typename Expr>
auto Sigmoid(const Expr& x) {
  return (0.5f * x).tanh() * 0.5f + 0.5f;
}

// How many row ranges ForEachRowRange cuts a batch into: one per intra-op thread.
int64_t NumRowRanges(OpKernelContext* ctx, int64_t batch) {
  return std::max<int64_t>(1, std::min<int64_t>(ctx->device()->tensorflow_cpu_worker_threads()->num_threads, batch));
}

// Runs fn(range, first_row, end_row) for range = 0 … NumRowRanges - 1 on the op's intra-op threads (each range
// runs all T steps): one contiguous range per thread, as even as possible. TensorFlow's own sharding cuts a batch
// of 64 into blocks of a few rows, which leaves the products' register blocks (6 rows) mostly in their slow tails.
template <typename Fn>
void ForEachRowRange(OpKernelContext* ctx, int64_t batch, Fn fn) {
  const int64_t ranges = NumRowRanges(ctx, batch);
  auto range = [&](int64_t first_range, int64_t end_range) {
    for (int64_t i = first_range; i < end_range; ++i) fn(i, batch * i / ranges, batch * (i + 1) / ranges);
  };
  tensorflow::Shard(ranges, ctx->device()->tensorflow_cpu_worker_threads()->workers, ranges,
                    /*cost_per_unit=*/int64_t{1} << 40, range);
}

// ---------------------------------------------------------------- bfloat16 products (AVX512_BF16)

#if defined(__AVX512BF16__)
constexpr bool kHasBf16 = true;
#else
constexpr bool kHasBf16 = false;
#endif

// Whether this build can run the bf16 attribute: trainer/native.py asks through ctypes.
extern "C" int deep_rnn_has_bf16() { return kHasBf16 ? 1 : 0; }

// Round-to-nearest-even float → bfloat16 bits (as vcvtne2ps2bf16 does; inputs here are finite).
inline uint32_t Bf16Bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return (u + 0x7fff + ((u >> 16) & 1)) >> 16;
}

// One step's rows between the ops' float32 maths and their xp / dxp tensors of type T (float or bfloat16).
// AsFloat gives float32 rows: the tensor's own memory for float, else a conversion into scratch.
inline const float* AsFloat(const float* src, int64_t, std::vector<float>&) { return src; }
inline const float* AsFloat(const bfloat16* src, int64_t n, std::vector<float>& scratch) {
  scratch.resize(n);
  const uint16_t* bits = reinterpret_cast<const uint16_t*>(src);
  float* dst = scratch.data();
  int64_t i = 0;
#if defined(__AVX512F__)
  for (; i + 16 <= n; i += 16)  // bfloat16 is float32's upper half: widen and shift
    _mm512_storeu_ps(dst + i, _mm512_castsi512_ps(_mm512_slli_epi32(
                                  _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)(bits + i))), 16)));
#endif
  for (; i < n; ++i) {
    const uint32_t u = uint32_t{bits[i]} << 16;
    std::memcpy(dst + i, &u, 4);
  }
  return dst;
}

inline void StoreAs(const float* src, int64_t n, float* dst) { std::memcpy(dst, src, n * sizeof(float)); }
inline void StoreAs(const float* src, int64_t n, bfloat16* dst) {
  uint16_t* bits = reinterpret_cast<uint16_t*>(dst);
  int64_t i = 0;
#if defined(__AVX512BF16__)
  for (; i + 16 <= n; i += 16)
    _mm256_storeu_si256((__m256i*)(bits + i), (__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(src + i)));
#endif
  for (; i < n; ++i) bits[i] = static_cast<uint16_t>(Bf16Bits(src[i]));
}

// acc [N] += the column sums of m [rows, N] (a bias gradient's share of one step).
inline void AddColumnSums(const Matrix& m, RowVector& acc) {
  for (int64_t r = 0; r < m.rows(); ++r) acc += m.row(r);
}

// Σ of the per-range partial sums → out [N] (float32).
void SumPartials(const std::vector<RowVector>& partials, Tensor* out) {
  Eigen::Map<RowVector> sum(out->flat<float>().data(), out->NumElements());
  sum.setZero();
  for (const RowVector& p : partials) sum += p;
}

// Σ of the per-range [H, G] partial kernel gradients → out [H, G] (float32).
void SumPartials(const std::vector<Matrix>& partials, Tensor* out) {
  MatrixMap sum(out->flat<float>().data(), out->dim_size(0), out->dim_size(1));
  sum.setZero();
  for (const Matrix& p : partials) sum += p;
}

// ---------------------------------------------------------------- AMX tiles (Intel AMX-BF16)
//
// Where the CPU has AMX and Linux grants the process its tile state (arch_prctl ARCH_REQ_XCOMP_PERM, Linux
// 5.16+), the bf16 products run on the tile unit (TDPBF16PS: a 16 × 16 float32 tile += 16 × 32 bf16 · 32 × 16
// bf16 per instruction) instead of vdpbf16ps: the same bf16 pairs and float32 accumulation, in larger blocks.
// Asked once, when the library loads; deep_rnn_uses_amx() tells trainer/native.py (and the tests) what runs.
// The environment variable DEEP_RNN_NO_AMX=1 keeps the AVX-512 path (for A/B timing and the tests).
#if defined(__AMX_TILE__) && defined(__AMX_BF16__) && defined(__AVX512BF16__) && defined(__linux__)
bool RequestTileState() {
  constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
  const char* off = std::getenv("DEEP_RNN_NO_AMX");
  if (off != nullptr && std::strcmp(off, "") != 0 && std::strcmp(off, "0") != 0) return false;
  return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
}
const bool kAmx = RequestTileState();
#else
constexpr bool kAmx = false;
#endif

extern "C" int deep_rnn_uses_amx() { return kAmx ? 1 : 0; }

// B [K, N] in the bf16 microkernel's layout: rows 2p and 2p+1 interleaved as bf16 pairs (one uint32 per column),
// columns padded with zeros to a multiple of 16 (one zmm), K padded to even; with AMX, the pairs padded with zero
// rows to a multiple of 16 (one tile's depth), which the AVX-512 path (reading k_pairs rows) never reads.
struct PackedBf16 {
  int64_t k_pairs = 0, k_pairs_padded = 0, n = 0, n_padded = 0;
  std::vector<uint32_t> data;  // [k_pairs_padded, n_padded]
};

PackedBf16 PackBf16(const Matrix& m) {  // m = B [K, N]
  PackedBf16 b;
  const int64_t k = m.rows();
  b.n = m.cols();
  b.k_pairs = (k + 1) / 2;
  b.k_pairs_padded = kAmx ? (b.k_pairs + 15) / 16 * 16 : b.k_pairs;
  b.n_padded = (b.n + 15) / 16 * 16;
  b.data.assign(b.k_pairs_padded * b.n_padded, 0);
  for (int64_t p = 0; p < b.k_pairs; ++p)
    for (int64_t j = 0; j < b.n; ++j)
      b.data[p * b.n_padded + j] =
          Bf16Bits(m(2 * p, j)) | (2 * p + 1 < k ? Bf16Bits(m(2 * p + 1, j)) << 16 : 0u);  // K odd: a zero row
  return b;
}

#if defined(__AVX512BF16__)
// c[R rows, 16·C columns from col] = a_pairs[R, k_pairs] (row stride k_pairs_padded) · B, accumulating in float32
// registers.
template <int R, int C>
inline void Bf16Block(const uint32_t* a, const PackedBf16& b, int64_t col, float* c, int64_t ldc) {
  __m512 acc[R][C];
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < C; ++j) acc[r][j] = _mm512_setzero_ps();
  const uint32_t* bp = b.data.data() + col;
  for (int64_t p = 0; p < b.k_pairs; ++p, bp += b.n_padded) {
    __m512bh bv[C];
    for (int j = 0; j < C; ++j) bv[j] = (__m512bh)_mm512_loadu_si512(bp + 16 * j);
    for (int r = 0; r < R; ++r) {
      const __m512bh av = (__m512bh)_mm512_set1_epi32(a[r * b.k_pairs_padded + p]);
      for (int j = 0; j < C; ++j) acc[r][j] = _mm512_dpbf16_ps(acc[r][j], av, bv[j]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < C; ++j) _mm512_storeu_ps(c + r * ldc + col + 16 * j, acc[r][j]);
}

// All rows against the column panel [col, col + 16·C): the panel stays in cache while the rows pass.
template <int C>
inline void Bf16Panel(const uint32_t* a_pairs, int64_t rows, const PackedBf16& b, int64_t col, float* c) {
  const int64_t ldc = b.n_padded, kp = b.k_pairs_padded;  // a_pairs' row stride
  int64_t r = 0;
  for (; r + 6 <= rows; r += 6) Bf16Block<6, C>(a_pairs + r * kp, b, col, c + r * ldc, ldc);
  const uint32_t* a = a_pairs + r * kp;
  float* out = c + r * ldc;
  switch (rows - r) {  // the last 1–5 rows in one block: row by row, B's loads would outnumber the products
    case 5: Bf16Block<5, C>(a, b, col, out, ldc); break;
    case 4: Bf16Block<4, C>(a, b, col, out, ldc); break;
    case 3: Bf16Block<3, C>(a, b, col, out, ldc); break;
    case 2: Bf16Block<2, C>(a, b, col, out, ldc); break;
    case 1: Bf16Block<1, C>(a, b, col, out, ldc); break;
  }
}
#endif

// B [K, N] float32 for the AVX-512 float32 microkernel: columns padded with zeros to a multiple of 16.
struct PackedF32 {
  int64_t k = 0, n = 0, n_padded = 0;
  std::vector<float> data;  // [k, n_padded]
};

PackedF32 PackF32(const Matrix& m) {  // m = B [K, N]
  PackedF32 b;
  b.k = m.rows();
  b.n = m.cols();
  b.n_padded = (b.n + 15) / 16 * 16;
  b.data.assign(b.k * b.n_padded, 0.0f);
  for (int64_t i = 0; i < b.k; ++i)
    for (int64_t j = 0; j < b.n; ++j) b.data[i * b.n_padded + j] = m(i, j);
  return b;
}

#if defined(__AVX512F__) && !defined(DEEP_RNN_EIGEN_PRODUCTS)
constexpr bool kHasAvx512 = true;

// c[R rows, 16·C columns from col] = a[R, k] (row stride lda) · B in float32 FMAs: Eigen's general product
// repacks both factors on every call, which costs more than the product at the recurrence's small shapes.
template <int R, int C>
inline void F32Block(const float* a, int64_t lda, const PackedF32& b, int64_t col, float* c, int64_t ldc) {
  __m512 acc[R][C];
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < C; ++j) acc[r][j] = _mm512_setzero_ps();
  const float* bp = b.data.data() + col;
  for (int64_t p = 0; p < b.k; ++p, bp += b.n_padded) {
    __m512 bv[C];
    for (int j = 0; j < C; ++j) bv[j] = _mm512_loadu_ps(bp + 16 * j);
    for (int r = 0; r < R; ++r) {
      const __m512 av = _mm512_set1_ps(a[r * lda + p]);
      for (int j = 0; j < C; ++j) acc[r][j] = _mm512_fmadd_ps(av, bv[j], acc[r][j]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < C; ++j) _mm512_storeu_ps(c + r * ldc + col + 16 * j, acc[r][j]);
}

template <int C>
inline void F32Panel(const float* a, int64_t rows, const PackedF32& b, int64_t col, float* c) {
  const int64_t ldc = b.n_padded;
  int64_t r = 0;
  for (; r + 6 <= rows; r += 6) F32Block<6, C>(a + r * b.k, b.k, b, col, c + r * ldc, ldc);
  const float* rest = a + r * b.k;
  float* out = c + r * ldc;
  switch (rows - r) {  // the last 1–5 rows in one block, as Bf16Panel
    case 5: F32Block<5, C>(rest, b.k, b, col, out, ldc); break;
    case 4: F32Block<4, C>(rest, b.k, b, col, out, ldc); break;
    case 3: F32Block<3, C>(rest, b.k, b, col, out, ldc); break;
    case 2: F32Block<2, C>(rest, b.k, b, col, out, ldc); break;
    case 1: F32Block<1, C>(rest, b.k, b, col, out, ldc); break;
  }
}
#else
constexpr bool kHasAvx512 = false;
#endif

// c [rows, b.n_padded] (row-major) = a [rows, K] (row-major) · B in float32. Only called when kHasAvx512.
void MatMulF32(const float* a, int64_t rows, const PackedF32& b, float* c) {
#if defined(__AVX512F__) && !defined(DEEP_RNN_EIGEN_PRODUCTS)
  int64_t col = 0;
  for (; col + 64 <= b.n_padded; col += 64) F32Panel<4>(a, rows, b, col, c);
  for (; col < b.n_padded; col += 16) F32Panel<1>(a, rows, b, col, c);
#endif
}

#if defined(__AMX_TILE__) && defined(__AMX_BF16__) && defined(__AVX512BF16__) && defined(__linux__)
// The tile configuration every product loads: palette 1, tiles 0–7 all 16 rows × 64 bytes. Tiles 0–3 hold C
// (2 × 2 blocks of 16 × 16 float32), 4–5 A (16 rows × 16 pairs), 6–7 B (16 pairs × 16 columns).
struct alignas(64) TileConfig {
  uint8_t palette_id = 1, start_row = 0, reserved[14] = {};
  uint16_t colsb[16] = {64, 64, 64, 64, 64, 64, 64, 64};
  uint8_t rows[16] = {16, 16, 16, 16, 16, 16, 16, 16};
};

// c[16·RT rows, 16·CT columns] = a_pairs[16·RT, 16·k_blocks] · B[16·k_blocks pairs, 16·CT] (strides in uint32 /
// float elements).
template <int RT, int CT>
inline void AmxBlock(const uint32_t* a, int64_t lda, const uint32_t* b, int64_t ldb, int64_t k_blocks, float* c,
                     int64_t ldc) {
  _tile_zero(0);
  if constexpr (CT > 1) _tile_zero(1);
  if constexpr (RT > 1) _tile_zero(2);
  if constexpr (RT > 1 && CT > 1) _tile_zero(3);
  for (int64_t kb = 0; kb < k_blocks; ++kb) {
    const uint32_t* ak = a + 16 * kb;        // 16 pairs along K
    const uint32_t* bk = b + 16 * kb * ldb;  // the same 16 pairs: B's rows
    _tile_loadd(4, ak, lda * 4);
    if constexpr (RT > 1) _tile_loadd(5, ak + 16 * lda, lda * 4);
    _tile_loadd(6, bk, ldb * 4);
    if constexpr (CT > 1) _tile_loadd(7, bk + 16, ldb * 4);
    _tile_dpbf16ps(0, 4, 6);
    if constexpr (CT > 1) _tile_dpbf16ps(1, 4, 7);
    if constexpr (RT > 1) _tile_dpbf16ps(2, 5, 6);
    if constexpr (RT > 1 && CT > 1) _tile_dpbf16ps(3, 5, 7);
  }
  _tile_stored(0, c, ldc * 4);
  if constexpr (CT > 1) _tile_stored(1, c + 16, ldc * 4);
  if constexpr (RT > 1) _tile_stored(2, c + 16 * ldc, ldc * 4);
  if constexpr (RT > 1 && CT > 1) _tile_stored(3, c + 16 * ldc + 16, ldc * 4);
}

// c [rows16, b.n_padded] = a_pairs [rows16, b.k_pairs_padded] · B; rows16 a multiple of 16. The tile state is
// configured on every call (another library, such as oneDNN, may have used the thread's tiles in between) and
// released after it.
void AmxProduct(const uint32_t* a, int64_t rows16, const PackedBf16& b, float* c) {
  static const TileConfig config;
  _tile_loadconfig(&config);
  const int64_t lda = b.k_pairs_padded, ldb = b.n_padded, ldc = b.n_padded, k_blocks = b.k_pairs_padded / 16;
  const uint32_t* bd = b.data.data();
  int64_t col = 0;
  for (; col + 32 <= b.n_padded; col += 32) {  // a 32-column panel of B stays in cache while the rows pass
    int64_t r = 0;
    for (; r + 32 <= rows16; r += 32) AmxBlock<2, 2>(a + r * lda, lda, bd + col, ldb, k_blocks, c + r * ldc + col, ldc);
    if (r < rows16) AmxBlock<1, 2>(a + r * lda, lda, bd + col, ldb, k_blocks, c + r * ldc + col, ldc);
  }
  if (col < b.n_padded) {  // the last 16 columns
    int64_t r = 0;
    for (; r + 32 <= rows16; r += 32) AmxBlock<2, 1>(a + r * lda, lda, bd + col, ldb, k_blocks, c + r * ldc + col, ldc);
    if (r < rows16) AmxBlock<1, 1>(a + r * lda, lda, bd + col, ldb, k_blocks, c + r * ldc + col, ldc);
  }
  _tile_release();
}
#endif

// Rows of the product's output that MatMulBf16 writes: with AMX, whole tiles (zero rows of A past `rows`).
inline int64_t Bf16OutputRows(int64_t rows) { return kAmx ? (rows + 15) / 16 * 16 : rows; }

// c [Bf16OutputRows(rows), b.n_padded] (row-major) = a [rows, K] (row-major, float32) · B, both factors rounded to
// bfloat16. a_pairs is scratch that this call sizes. Only called when kHasBf16 (the op refuses the attribute
// otherwise).
void MatMulBf16(const float* a, int64_t rows, int64_t k, const PackedBf16& b, float* c,
                std::vector<uint32_t>& a_pairs) {
#if defined(__AVX512BF16__)
  const int64_t lda = b.k_pairs_padded, out_rows = Bf16OutputRows(rows);
  a_pairs.resize(out_rows * lda);
  if (lda != b.k_pairs)  // AMX's pads are zeros: K past k_pairs in each row, then whole rows past `rows`
    for (int64_t r = 0; r < rows; ++r) std::fill_n(a_pairs.data() + r * lda + b.k_pairs, lda - b.k_pairs, 0u);
  std::fill(a_pairs.begin() + rows * lda, a_pairs.end(), 0u);
  for (int64_t r = 0; r < rows; ++r) {
    const float* src = a + r * k;
    uint32_t* dst = a_pairs.data() + r * lda;
    int64_t i = 0;
    for (; i + 32 <= k; i += 32)  // 32 floats → 16 pairs; the low half of the result holds the first 16
      _mm512_storeu_si512(dst + i / 2, (__m512i)_mm512_cvtne2ps_pbh(_mm512_loadu_ps(src + i + 16),
                                                                     _mm512_loadu_ps(src + i)));
    for (; i < k; i += 2) dst[i / 2] = Bf16Bits(src[i]) | (i + 1 < k ? Bf16Bits(src[i + 1]) << 16 : 0u);
  }
#if defined(__AMX_TILE__) && defined(__AMX_BF16__) && defined(__linux__)
  if (kAmx) {
    AmxProduct(a_pairs.data(), out_rows, b, c);
    return;
  }
#endif
  int64_t col = 0;
  for (; col + 64 <= b.n_padded; col += 64) Bf16Panel<4>(a_pairs.data(), rows, b, col, c);
  for (; col < b.n_padded; col += 16) Bf16Panel<1>(a_pairs.data(), rows, b, col, c);
#endif
}

// The recurrent product of one thread's rows: out [rows, N] = a [rows, K] · B, B = U or Uᵀ: bf16 pairs, the
// AVX-512 float32 microkernel, or (CPUs without AVX-512) Eigen's product.
struct RecurrentProduct {
  Matrix b;  // B = U or Uᵀ [K, N], contiguous (Eigen's product with a transposed map is ~25 % slower)
  int64_t k, n;
  bool bf16;
  PackedBf16 packed_bf16;
  PackedF32 packed_f32;

  RecurrentProduct(const float* u, int64_t u_rows, int64_t u_cols, bool bf16, bool transpose) : bf16(bf16) {
    const ConstMatrixMap u_map(u, u_rows, u_cols);
    if (transpose) {
      b = u_map.transpose();
    } else {
      b = u_map;
    }
    k = b.rows();
    n = b.cols();
    if (bf16) {
      packed_bf16 = PackBf16(b);
    } else if (kHasAvx512) {
      packed_f32 = PackF32(b);
    }
  }

  // Per-thread scratch for one product.
  struct Scratch {
    std::vector<uint32_t> a_pairs;
    Matrix padded;
  };

  // out [rows, n] (row-major, contiguous) = a [rows, K] · B. The microkernels write whole 16-column panels, so
  // they write straight into out unless N needs padding.
  void Run(const float* a, int64_t rows, float* out, Scratch& s) const {
    if (!bf16 && !kHasAvx512) {
      MatrixMap(out, rows, n).noalias() = ConstMatrixMap(a, rows, k) * b;
      return;
    }
    const int64_t n_padded = bf16 ? packed_bf16.n_padded : packed_f32.n_padded;
    const int64_t c_rows = bf16 ? Bf16OutputRows(rows) : rows;
    float* c = out;
    if (n_padded != n || c_rows != rows) {
      s.padded.resize(c_rows, n_padded);
      c = s.padded.data();
    }
    if (bf16) {
      MatMulBf16(a, rows, k, packed_bf16, c, s.a_pairs);
    } else {
      MatMulF32(a, rows, packed_f32, c);
    }
    if (c != out) MatrixMap(out, rows, n) = s.padded.topLeftCorner(rows, n);
  }
};

absl::Status CheckRank(InferenceContext* c, int input, int rank) {
  ShapeHandle unused;
  return c->WithRank(c->input(input), rank, &unused);
}

// Shape checks shared by both GRU and LSTM forward ops: xp [T, B, G·H], input_bias [G·H], h0 [B, H], U [H, G·H].
void CheckForwardShapes(OpKernelContext* ctx, int gates, const Tensor& xp, const Tensor& input_bias, const Tensor& h0,
                        const Tensor& u) {
  OP_REQUIRES(ctx, xp.dims() == 3 && h0.dims() == 2 && u.dims() == 2,
              absl::InvalidArgumentError("expected xp [T, B, G*H], h0 [B, H], recurrent_kernel [H, G*H]"));
  const int64_t units = h0.dim_size(1);
  OP_REQUIRES(ctx, xp.dim_size(1) == h0.dim_size(0) && xp.dim_size(2) == gates * units &&
                       input_bias.NumElements() == gates * units && u.dim_size(0) == units &&
                       u.dim_size(1) == gates * units,
              absl::InvalidArgumentError(absl::StrCat("inconsistent shapes: xp ", xp.shape().DebugString(),
                                                      ", input_bias ", input_bias.shape().DebugString(), ", h0 ",
                                                      h0.shape().DebugString(), ", recurrent_kernel ",
                                                      u.shape().DebugString())));
}

// The forward ops' output shapes: the outputs before gates_output (h, and the LSTM's c) are [T, B, H], the
// gate tensor at gates_output is [T, B, gate_columns · H].
absl::Status ForwardShapes(InferenceContext* c, int h0_input, int gate_columns, int gates_output) {
  TF_RETURN_IF_ERROR(CheckRank(c, 0, 3));
  TF_RETURN_IF_ERROR(CheckRank(c, h0_input, 2));
  ShapeHandle xp = c->input(0);
  DimensionHandle units = c->Dim(c->input(h0_input), 1), columns;
  TF_RETURN_IF_ERROR(c->Multiply(units, gate_columns, &columns));
  for (int i = 0; i < gates_output; ++i) c->set_output(i, c->MakeShape({c->Dim(xp, 0), c->Dim(xp, 1), units}));
  c->set_output(gates_output, c->MakeShape({c->Dim(xp, 0), c->Dim(xp, 1), columns}));
  return absl::OkStatus();
}

// ---------------------------------------------------------------- GRU

REGISTER_OP("DeepRnnGruSequence")
    .Attr("bf16: bool = false")             // recurrent products in bfloat16 (needs AVX512_BF16)
    .Attr("T: {float, bfloat16} = DT_FLOAT")  // xp's type
    .Input("xp: T")                         // [T, B, 3H]: x_t W, gates z, r, h
    .Input("input_bias: float")             // [3H]: added to xp
    .Input("h0: float")                     // [B, H]
    .Input("recurrent_kernel: float")       // [H, 3H]
    .Input("recurrent_bias: float")         // [3H]
    .Output("h: float")                     // [T, B, H]
    .Output("gates: float")  // [T, B, 4H]: z, r, candidate, h_{t-1} U_h + b_h (kept for the gradient)
    .SetShapeFn([](InferenceContext* c) { return ForwardShapes(c, /*h0_input=*/2, 4, /*gates_output=*/1); });

REGISTER_OP("DeepRnnGruSequenceGrad")
    .Attr("bf16: bool = false")             // recurrent products in bfloat16 (needs AVX512_BF16)
    .Attr("T: {float, bfloat16} = DT_FLOAT")  // dxp's and dhp's type (the forward op's xp type)
    .Attr("kernel_grad: bool = false")      // U's gradient summed in the op (d_kernel) instead of via dhp
    .Input("h0: float")                     // [B, H]
    .Input("recurrent_kernel: float")       // [H, 3H]
    .Input("h: float")                      // [T, B, H]
    .Input("gates: float")                  // [T, B, 4H]
    .Input("dh: float")                     // [T, B, H]: loss gradient w.r.t. each step's output
    .Output("dxp: T")                       // [T, B, 3H]
    .Output("dhp: T")                       // [T, B, 3H]: w.r.t. h_{t-1} U + b (for U's gradient); [0, 0, 0]
                                            // with kernel_grad
    .Output("dh0: float")                   // [B, H]
    .Output("d_input_bias: float")          // [3H]: Σ dxp over steps and rows
    .Output("d_recurrent_bias: float")      // [3H]: Σ dhp over steps and rows
    .Output("d_kernel: float")              // [H, 3H]: Σ_t h_{t-1}ᵀ dhp_t with kernel_grad, else [0, 0]
    .SetShapeFn([](InferenceContext* c) {
      bool kernel_grad = false;
      TF_RETURN_IF_ERROR(c->GetAttr("kernel_grad", &kernel_grad));
      ShapeHandle h = c->input(2);
      DimensionHandle three;
      TF_RETURN_IF_ERROR(c->Multiply(c->Dim(h, 2), 3, &three));
      c->set_output(0, c->MakeShape({c->Dim(h, 0), c->Dim(h, 1), three}));
      c->set_output(1, kernel_grad ? c->MakeShape({0, 0, 0}) : c->output(0));
      c->set_output(2, c->input(0));
      c->set_output(3, c->Vector(three));
      c->set_output(4, c->Vector(three));
      c->set_output(5, kernel_grad ? c->Matrix(c->Dim(h, 2), three) : c->Matrix(0, 0));
      return absl::OkStatus();
    });

// Refuses the bf16 attribute where this CPU or build has no AVX512_BF16.
void CheckBf16Attribute(OpKernelConstruction* ctx, bool* bf16) {
  OP_REQUIRES_OK(ctx, ctx->GetAttr("bf16", bf16));
  OP_REQUIRES(ctx, !*bf16 || kHasBf16,
              absl::UnimplementedError("bf16 recurrent products need AVX512_BF16, which this CPU or build lacks"));
}

template <typename T>
class GruSequenceOp : public OpKernel {
 private:
  bool bf16_ = false;

 public:
  explicit GruSequenceOp(OpKernelConstruction* ctx) : OpKernel(ctx) { CheckBf16Attribute(ctx, &bf16_); }

  void Compute(OpKernelContext* ctx) override {
    const Tensor &xp = ctx->input(0), &input_bias = ctx->input(1), &h0 = ctx->input(2), &u = ctx->input(3),
                 &bias = ctx->input(4);
    CheckForwardShapes(ctx, 3, xp, input_bias, h0, u);
    if (!ctx->status().ok()) return;
    const int64_t steps = xp.dim_size(0), batch = xp.dim_size(1), H = h0.dim_size(1);
    OP_REQUIRES(ctx, bias.NumElements() == 3 * H, absl::InvalidArgumentError("recurrent_bias must be [3H]"));
    Tensor *h = nullptr, *gates = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({steps, batch, H}), &h));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, TensorShape({steps, batch, 4 * H}), &gates));
    const T* xp_data = xp.flat<T>().data();
    const float* h0_data = h0.flat<float>().data();
    float *h_data = h->flat<float>().data(), *gates_data = gates->flat<float>().data();
    const RecurrentProduct product(u.flat<float>().data(), H, 3 * H, bf16_, /*transpose=*/false);
    RowVectorMap b(bias.flat<float>().data(), 3 * H), b_in(input_bias.flat<float>().data(), 3 * H);

    ForEachRowRange(ctx, batch, [&](int64_t, int64_t first, int64_t end) {
      const int64_t rows = end - first;
      Matrix hp(rows, 3 * H), x(rows, 3 * H);  // h_{t-1} U + b and x_t W + b_in for this thread's rows
      std::vector<float> staged;
      RecurrentProduct::Scratch scratch;
      for (int64_t t = 0; t < steps; ++t) {
        const float* prev_data = t == 0 ? h0_data + first * H : h_data + ((t - 1) * batch + first) * H;
        ConstMatrixMap prev(prev_data, rows, H);
        x = ConstMatrixMap(AsFloat(xp_data + (t * batch + first) * 3 * H, rows * 3 * H, staged), rows, 3 * H)
                .rowwise() + b_in;
        MatrixMap out(h_data + (t * batch + first) * H, rows, H);
        MatrixMap g(gates_data + (t * batch + first) * 4 * H, rows, 4 * H);
        product.Run(prev_data, rows, hp.data(), scratch);
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

template <typename T>
class GruSequenceGradOp : public OpKernel {
 private:
  bool bf16_ = false;
  bool kernel_grad_ = false;

 public:
  explicit GruSequenceGradOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    CheckBf16Attribute(ctx, &bf16_);
    OP_REQUIRES_OK(ctx, ctx->GetAttr("kernel_grad", &kernel_grad_));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor &h0 = ctx->input(0), &u = ctx->input(1), &h = ctx->input(2), &gates = ctx->input(3),
                 &dh = ctx->input(4);
    const int64_t steps = h.dim_size(0), batch = h.dim_size(1), H = h.dim_size(2);
    OP_REQUIRES(ctx, dh.shape() == h.shape() && gates.dim_size(2) == 4 * H && u.dim_size(1) == 3 * H,
                absl::InvalidArgumentError("inconsistent shapes in DeepRnnGruSequenceGrad"));
    Tensor *dxp = nullptr, *dhp = nullptr, *dh0 = nullptr, *d_input_bias = nullptr, *d_recurrent_bias = nullptr,
           *d_kernel = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({steps, batch, 3 * H}), &dxp));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, kernel_grad_ ? TensorShape({0, 0, 0}) : TensorShape({steps, batch, 3 * H}),
                                             &dhp));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(2, h0.shape(), &dh0));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(3, TensorShape({3 * H}), &d_input_bias));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(4, TensorShape({3 * H}), &d_recurrent_bias));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(5, kernel_grad_ ? TensorShape({H, 3 * H}) : TensorShape({0, 0}), &d_kernel));
    const float *h0_data = h0.flat<float>().data(), *h_data = h.flat<float>().data();
    const float *gates_data = gates.flat<float>().data(), *dh_data = dh.flat<float>().data();
    T *dxp_data = dxp->flat<T>().data(), *dhp_data = dhp->flat<T>().data();
    float* dh0_data = dh0->flat<float>().data();
    const RecurrentProduct product_t(u.flat<float>().data(), H, 3 * H, bf16_, /*transpose=*/true);  // · Uᵀ
    const int64_t ranges = NumRowRanges(ctx, batch);
    std::vector<RowVector> dx_sums(ranges, RowVector::Zero(3 * H)), dr_sums(ranges, RowVector::Zero(3 * H));
    std::vector<Matrix> du_sums(kernel_grad_ ? ranges : 0, Matrix::Zero(H, 3 * H));  // U's gradient by range

    ForEachRowRange(ctx, batch, [&](int64_t range, int64_t first, int64_t end) {
      const int64_t rows = end - first;
      Matrix carry = Matrix::Zero(rows, H);  // dL/dh_t from step t+1
      Matrix grad(rows, H), dx(rows, 3 * H), dr(rows, 3 * H);
      RecurrentProduct::Scratch scratch;
      for (int64_t t = steps - 1; t >= 0; --t) {
        const float* prev_data = t == 0 ? h0_data + first * H : h_data + ((t - 1) * batch + first) * H;
        ConstMatrixMap prev(prev_data, rows, H);
        ConstMatrixMap g(gates_data + (t * batch + first) * 4 * H, rows, 4 * H);
        ConstMatrixMap d_out(dh_data + (t * batch + first) * H, rows, H);
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
        product_t.Run(dr.data(), rows, carry.data(), scratch);
        carry.array() += d * z;
        StoreAs(dx.data(), rows * 3 * H, dxp_data + (t * batch + first) * 3 * H);
        if (kernel_grad_) {
          du_sums[range].noalias() += prev.transpose() * dr;  // [H, rows] · [rows, 3H], while both are in cache
        } else {
          StoreAs(dr.data(), rows * 3 * H, dhp_data + (t * batch + first) * 3 * H);
        }
        AddColumnSums(dx, dx_sums[range]);
        AddColumnSums(dr, dr_sums[range]);
      }
      MatrixMap(dh0_data + first * H, rows, H) = carry;
    });
    SumPartials(dx_sums, d_input_bias);
    SumPartials(dr_sums, d_recurrent_bias);
    if (kernel_grad_) SumPartials(du_sums, d_kernel);
  }
};

// ---------------------------------------------------------------- LSTM

REGISTER_OP("DeepRnnLstmSequence")
    .Attr("bf16: bool = false")             // recurrent products in bfloat16 (needs AVX512_BF16)
    .Attr("T: {float, bfloat16} = DT_FLOAT")  // xp's type
    .Input("xp: T")                         // [T, B, 4H]: x_t W, gates i, f, c, o
    .Input("input_bias: float")             // [4H]: added to xp
    .Input("h0: float")                     // [B, H]
    .Input("c0: float")                     // [B, H]
    .Input("recurrent_kernel: float")       // [H, 4H]
    .Output("h: float")                     // [T, B, H]
    .Output("c: float")                     // [T, B, H]
    .Output("gates: float")                 // [T, B, 4H]: σ(i), σ(f), tanh(g), σ(o) (kept for the gradient)
    .SetShapeFn([](InferenceContext* c) { return ForwardShapes(c, /*h0_input=*/2, 4, /*gates_output=*/2); });

REGISTER_OP("DeepRnnLstmSequenceGrad")
    .Attr("bf16: bool = false")             // recurrent products in bfloat16 (needs AVX512_BF16)
    .Attr("T: {float, bfloat16} = DT_FLOAT")  // dxp's type (the forward op's xp type)
    .Attr("kernel_grad: bool = false")      // U's gradient summed in the op (d_kernel)
    .Input("h0: float")                     // [B, H]
    .Input("c0: float")                     // [B, H]
    .Input("recurrent_kernel: float")       // [H, 4H]
    .Input("h: float")                      // [T, B, H]
    .Input("c: float")                      // [T, B, H]
    .Input("gates: float")                  // [T, B, 4H]
    .Input("dh: float")                     // [T, B, H]: loss gradient w.r.t. each step's h
    .Input("dc: float")                     // [T, B, H]: loss gradient w.r.t. each step's c (zeros when unused)
    .Output("dxp: T")                       // [T, B, 4H] (also the gradient w.r.t. h_{t-1} U)
    .Output("dh0: float")                   // [B, H]
    .Output("dc0: float")                   // [B, H]
    .Output("d_input_bias: float")          // [4H]: Σ dxp over steps and rows
    .Output("d_kernel: float")              // [H, 4H]: Σ_t h_{t-1}ᵀ dxp_t with kernel_grad, else [0, 0]
    .SetShapeFn([](InferenceContext* c) {
      bool kernel_grad = false;
      TF_RETURN_IF_ERROR(c->GetAttr("kernel_grad", &kernel_grad));
      c->set_output(0, c->input(5));
      c->set_output(1, c->input(0));
      c->set_output(2, c->input(1));
      c->set_output(3, c->Vector(c->Dim(c->input(5), 2)));
      c->set_output(4, kernel_grad ? c->Matrix(c->Dim(c->input(3), 2), c->Dim(c->input(5), 2)) : c->Matrix(0, 0));
      return absl::OkStatus();
    });

template <typename T>
class LstmSequenceOp : public OpKernel {
 private:
  bool bf16_ = false;

 public:
  explicit LstmSequenceOp(OpKernelConstruction* ctx) : OpKernel(ctx) { CheckBf16Attribute(ctx, &bf16_); }

  void Compute(OpKernelContext* ctx) override {
    const Tensor &xp = ctx->input(0), &input_bias = ctx->input(1), &h0 = ctx->input(2), &c0 = ctx->input(3),
                 &u = ctx->input(4);
    CheckForwardShapes(ctx, 4, xp, input_bias, h0, u);
    if (!ctx->status().ok()) return;
    OP_REQUIRES(ctx, c0.shape() == h0.shape(), absl::InvalidArgumentError("c0 must have h0's shape"));
    const int64_t steps = xp.dim_size(0), batch = xp.dim_size(1), H = h0.dim_size(1);
    Tensor *h = nullptr, *c = nullptr, *gates = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({steps, batch, H}), &h));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, TensorShape({steps, batch, H}), &c));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(2, TensorShape({steps, batch, 4 * H}), &gates));
    const T* xp_data = xp.flat<T>().data();
    const float *h0_data = h0.flat<float>().data(), *c0_data = c0.flat<float>().data();
    float *h_data = h->flat<float>().data(), *c_data = c->flat<float>().data();
    float* gates_data = gates->flat<float>().data();
    const RecurrentProduct product(u.flat<float>().data(), H, 4 * H, bf16_, /*transpose=*/false);
    RowVectorMap b_in(input_bias.flat<float>().data(), 4 * H);

    ForEachRowRange(ctx, batch, [&](int64_t, int64_t first, int64_t end) {
      const int64_t rows = end - first;
      std::vector<float> staged;
      RecurrentProduct::Scratch scratch;
      for (int64_t t = 0; t < steps; ++t) {
        const int64_t prev_offset = ((t - 1) * batch + first) * H;
        ConstMatrixMap h_prev(t == 0 ? h0_data + first * H : h_data + prev_offset, rows, H);
        ConstMatrixMap c_prev(t == 0 ? c0_data + first * H : c_data + prev_offset, rows, H);
        ConstMatrixMap x(AsFloat(xp_data + (t * batch + first) * 4 * H, rows * 4 * H, staged), rows, 4 * H);
        MatrixMap g(gates_data + (t * batch + first) * 4 * H, rows, 4 * H);
        MatrixMap h_out(h_data + (t * batch + first) * H, rows, H);
        MatrixMap c_out(c_data + (t * batch + first) * H, rows, H);
        product.Run(h_prev.data(), rows, g.data(), scratch);
        g += x.rowwise() + b_in;
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

template <typename T>
class LstmSequenceGradOp : public OpKernel {
 private:
  bool bf16_ = false;
  bool kernel_grad_ = false;

 public:
  explicit LstmSequenceGradOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    CheckBf16Attribute(ctx, &bf16_);
    OP_REQUIRES_OK(ctx, ctx->GetAttr("kernel_grad", &kernel_grad_));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor &h0 = ctx->input(0), &c0 = ctx->input(1), &u = ctx->input(2), &h = ctx->input(3),
                 &c = ctx->input(4), &gates = ctx->input(5), &dh = ctx->input(6), &dc = ctx->input(7);
    const int64_t steps = c.dim_size(0), batch = c.dim_size(1), H = c.dim_size(2);
    OP_REQUIRES(ctx, h.shape() == c.shape() && dh.shape() == c.shape() && dc.shape() == c.shape() &&
                         gates.dim_size(2) == 4 * H && u.dim_size(1) == 4 * H,
                absl::InvalidArgumentError("inconsistent shapes in DeepRnnLstmSequenceGrad"));
    Tensor *dxp = nullptr, *dh0 = nullptr, *dc0 = nullptr, *d_input_bias = nullptr, *d_kernel = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, gates.shape(), &dxp));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, h0.shape(), &dh0));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(2, c0.shape(), &dc0));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(3, TensorShape({4 * H}), &d_input_bias));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(4, kernel_grad_ ? TensorShape({H, 4 * H}) : TensorShape({0, 0}), &d_kernel));
    const float *h0_data = h0.flat<float>().data(), *h_data = h.flat<float>().data();
    const float *c0_data = c0.flat<float>().data(), *c_data = c.flat<float>().data();
    const float *gates_data = gates.flat<float>().data(), *dh_data = dh.flat<float>().data();
    const float* dc_data = dc.flat<float>().data();
    T* dxp_data = dxp->flat<T>().data();
    float *dh0_data = dh0->flat<float>().data(), *dc0_data = dc0->flat<float>().data();
    const RecurrentProduct product_t(u.flat<float>().data(), H, 4 * H, bf16_, /*transpose=*/true);  // · Uᵀ
    const int64_t ranges = NumRowRanges(ctx, batch);
    std::vector<RowVector> dx_sums(ranges, RowVector::Zero(4 * H));
    std::vector<Matrix> du_sums(kernel_grad_ ? ranges : 0, Matrix::Zero(H, 4 * H));  // U's gradient by range

    ForEachRowRange(ctx, batch, [&](int64_t range, int64_t first, int64_t end) {
      const int64_t rows = end - first;
      RecurrentProduct::Scratch scratch;
      Matrix h_carry = Matrix::Zero(rows, H), c_carry = Matrix::Zero(rows, H);
      Matrix tanh_c(rows, H), grad_c(rows, H), dx(rows, 4 * H);
      for (int64_t t = steps - 1; t >= 0; --t) {
        const int64_t here = (t * batch + first) * H;
        ConstMatrixMap c_prev(t == 0 ? c0_data + first * H : c_data + ((t - 1) * batch + first) * H, rows, H);
        ConstMatrixMap c_t(c_data + here, rows, H), d_h(dh_data + here, rows, H), d_c(dc_data + here, rows, H);
        ConstMatrixMap g(gates_data + 4 * here, rows, 4 * H);
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
        product_t.Run(dx.data(), rows, h_carry.data(), scratch);
        StoreAs(dx.data(), rows * 4 * H, dxp_data + 4 * here);
        AddColumnSums(dx, dx_sums[range]);
        if (kernel_grad_) {  // [H, rows] · [rows, 4H], while both are in cache
          ConstMatrixMap h_prev(t == 0 ? h0_data + first * H : h_data + ((t - 1) * batch + first) * H, rows, H);
          du_sums[range].noalias() += h_prev.transpose() * dx;
        }
      }
      MatrixMap(dh0_data + first * H, rows, H) = h_carry;
      MatrixMap(dc0_data + first * H, rows, H) = c_carry;
    });
    SumPartials(dx_sums, d_input_bias);
    if (kernel_grad_) SumPartials(du_sums, d_kernel);
  }
};

// ---------------------------------------------------------------- the first layer's row lookup

// The gradient of tf.gather(table, ids) for the first layer's input projection (trainer/native.py lookup_rows):
// d_table [V, G] = Σ of dy's rows by id. TensorFlow's routes are a one-hot [N, V] matmul (N·V·G products, and a
// one-hot tensor written and read) or an unsorted segment sum that serialises on a few dozen rows; here each
// thread owns a range of columns and adds every row's share into it, so no thread waits on another and each
// row is read once.
REGISTER_OP("DeepRnnLookupGrad")
    .Attr("T: {float, bfloat16} = DT_FLOAT")
    .Input("ids: int32")                    // [N]
    .Input("dy: T")                         // [N, G]
    .Input("num_rows: int32")               // V, the table's rows
    .Output("d_table: T")                   // [V, G]
    .SetShapeFn([](InferenceContext* c) {
      DimensionHandle rows;
      TF_RETURN_IF_ERROR(c->MakeDimForScalarInput(2, &rows));
      c->set_output(0, c->Matrix(rows, c->Dim(c->input(1), 1)));
      return absl::OkStatus();
    });

template <typename T>
class LookupGradOp : public OpKernel {
 public:
  explicit LookupGradOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    const Tensor &ids = ctx->input(0), &dy = ctx->input(1), &num_rows = ctx->input(2);
    OP_REQUIRES(ctx, ids.dims() == 1 && dy.dims() == 2 && dy.dim_size(0) == ids.dim_size(0) &&
                         num_rows.dims() == 0,
                absl::InvalidArgumentError(absl::StrCat("expected ids [N], dy [N, G], num_rows scalar; got ids ",
                                                        ids.shape().DebugString(), ", dy ", dy.shape().DebugString())));
    const int64_t n = dy.dim_size(0), columns = dy.dim_size(1), vocab = num_rows.scalar<int32_t>()();
    OP_REQUIRES(ctx, vocab >= 0, absl::InvalidArgumentError("num_rows must be >= 0"));
    const int32_t* id = ids.flat<int32_t>().data();
    for (int64_t i = 0; i < n; ++i)
      OP_REQUIRES(ctx, id[i] >= 0 && id[i] < vocab,
                  absl::InvalidArgumentError(absl::StrCat("ids[", i, "] = ", id[i], " is not in [0, ", vocab, ")")));
    Tensor* d_table = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({vocab, columns}), &d_table));
    const T* src = dy.flat<T>().data();
    T* out = d_table->flat<T>().data();
    constexpr bool kFloat = std::is_same<T, float>::value;
    std::vector<float> sums(kFloat ? 0 : vocab * columns, 0.0f);  // [V, G] float32 sums for bfloat16 dy
    float* acc = kFloat ? reinterpret_cast<float*>(out) : sums.data();
    if (kFloat) std::fill(acc, acc + vocab * columns, 0.0f);
    auto column_range = [&](int64_t first, int64_t end) {
      std::vector<float> staged;
      const int64_t width = end - first;
      for (int64_t i = 0; i < n; ++i) {
        const float* row = AsFloat(src + i * columns + first, width, staged);
        float* dst = acc + id[i] * columns + first;
        for (int64_t j = 0; j < width; ++j) dst[j] += row[j];
      }
    };
    // Columns in blocks of 16 (one AVX-512 register) split over the threads.
    const int64_t blocks = (columns + 15) / 16;
    tensorflow::Shard(NumRowRanges(ctx, blocks), ctx->device()->tensorflow_cpu_worker_threads()->workers, blocks,
                      /*cost_per_unit=*/16 * n, [&](int64_t first_block, int64_t end_block) {
                        column_range(16 * first_block, std::min(columns, 16 * end_block));
                      });
    if (!kFloat) StoreAs(sums.data(), vocab * columns, out);
  }
};

// ---------------------------------------------------------------- the loss

// Per-token softmax cross-entropy from logits, and (attribute gradient) its gradient softmax − one_hot, in one
// pass over each row while it is in cache. TensorFlow's route for the trainer's loss (trainer/metrics.py
// token_cross_entropy) is a dozen whole-tensor ops each way (max, exp, sum, log, one-hot, product, …) over
// [B·T, V] logits, each a pass through memory for a character vocabulary of a few dozen columns; its own fused
// SparseSoftmaxCrossEntropyWithLogits kernel is no faster at these shapes (bench.train_profile times both).
// The metrics ask for the loss only (gradient = false).
REGISTER_OP("DeepRnnSoftmaxCrossEntropy")
    .Attr("gradient: bool = true")          // also compute backprop (the loss's gradient w.r.t. the logits)
    .Input("logits: float")                 // [N, V]
    .Input("labels: int32")                 // [N], each in [0, V)
    .Output("loss: float")                  // [N]: logsumexp(logits) − logits[label]
    .Output("backprop: float")              // [N, V]: softmax(logits) − one_hot(label); [0, V] without gradient
    .SetShapeFn([](InferenceContext* c) {
      bool backprop = true;
      TF_RETURN_IF_ERROR(c->GetAttr("gradient", &backprop));
      ShapeHandle logits;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 2, &logits));
      TF_RETURN_IF_ERROR(CheckRank(c, 1, 1));
      c->set_output(0, c->Vector(c->Dim(logits, 0)));
      c->set_output(1, backprop ? logits : c->Matrix(0, c->Dim(logits, 1)));
      return absl::OkStatus();
    });

class SoftmaxCrossEntropyOp : public OpKernel {
 private:
  bool backprop_ = true;

 public:
  explicit SoftmaxCrossEntropyOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("gradient", &backprop_));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor &logits = ctx->input(0), &labels = ctx->input(1);
    OP_REQUIRES(ctx, logits.dims() == 2 && labels.dims() == 1 && labels.dim_size(0) == logits.dim_size(0),
                absl::InvalidArgumentError(absl::StrCat("expected logits [N, V] and labels [N]; got logits ",
                                                        logits.shape().DebugString(), ", labels ",
                                                        labels.shape().DebugString())));
    const int64_t n = logits.dim_size(0), vocab = logits.dim_size(1);
    OP_REQUIRES(ctx, vocab > 0 || n == 0, absl::InvalidArgumentError("logits need at least one column"));
    const int32_t* label = labels.flat<int32_t>().data();
    for (int64_t i = 0; i < n; ++i)
      OP_REQUIRES(ctx, label[i] >= 0 && label[i] < vocab,
                  absl::InvalidArgumentError(absl::StrCat("labels[", i, "] = ", label[i], " is not in [0, ", vocab,
                                                          ")")));
    Tensor *loss = nullptr, *backprop = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({n}), &loss));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, TensorShape({backprop_ ? n : 0, vocab}), &backprop));
    const float* x = logits.flat<float>().data();
    float* loss_data = loss->flat<float>().data();
    float* grad_data = backprop_ ? backprop->flat<float>().data() : nullptr;
    constexpr int64_t kBlock = 64;  // rows a shard takes at a time
    const int64_t blocks = (n + kBlock - 1) / kBlock;
    auto run = [&](int64_t first_block, int64_t end_block) {
      const int64_t first = first_block * kBlock, end = std::min(n, end_block * kBlock);
#if defined(__AVX512F__)
      SoftmaxCrossEntropyRowsAvx512(x, label, vocab, first, end, loss_data, grad_data);
#else
      SoftmaxCrossEntropyRows(x, label, vocab, first, end, loss_data, grad_data);
#endif
    };
    tensorflow::Shard(NumRowRanges(ctx, blocks), ctx->device()->tensorflow_cpu_worker_threads()->workers, blocks,
                      /*cost_per_unit=*/kBlock * vocab * 20, run);
  }

 private:
  // Rows [first, end) through Eigen's vectorised maths, blocks of 64 rows at a time (CPUs without AVX-512).
  static void SoftmaxCrossEntropyRows(const float* x, const int32_t* label, int64_t vocab, int64_t first,
                                      int64_t end, float* loss, float* grad) {
    Matrix exps;
    for (int64_t start = first; start < end; start += 64) {
      const int64_t rows = std::min<int64_t>(64, end - start);
      ConstMatrixMap z(x + start * vocab, rows, vocab);
      const Eigen::VectorXf max = z.rowwise().maxCoeff();
      exps = (z.colwise() - max).array().exp().matrix();  // [rows, V]
      const Eigen::VectorXf sums = exps.rowwise().sum();
      for (int64_t r = 0; r < rows; ++r)  // log Σ exp(z − max) − (z[label] − max): no large terms to cancel
        loss[start + r] = std::log(sums(r)) - (z(r, label[start + r]) - max(r));
      if (grad != nullptr) {
        MatrixMap g(grad + start * vocab, rows, vocab);
        g = (exps.array().colwise() / sums.array()).matrix();
        for (int64_t r = 0; r < rows; ++r) g(r, label[start + r]) -= 1.0f;
      }
    }
  }

#if defined(__AVX512F__)
  // The same, a row at a time in 16-column registers (the last one masked), 16 rows' logs in one register:
  // Eigen's row-wise reductions over a few dozen columns, and a scalar log per row, cost more than the exps.
  static void SoftmaxCrossEntropyRowsAvx512(const float* x, const int32_t* label, int64_t vocab, int64_t first,
                                            int64_t end, float* loss, float* grad) {
    using Eigen::internal::pexp;
    using Eigen::internal::plog;
    const __m512 lowest = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
    alignas(64) float max[16], sum[16];
    for (int64_t start = first; start < end; start += 16) {
      const int64_t rows = std::min<int64_t>(16, end - start);
      for (int64_t r = 0; r < rows; ++r) {
        const float* z = x + (start + r) * vocab;
        __m512 m = lowest;
        for (int64_t c = 0; c < vocab; c += 16) {
          const __mmask16 lanes = ColumnMask(vocab - c);
          m = _mm512_max_ps(m, _mm512_mask_loadu_ps(lowest, lanes, z + c));
        }
        max[r] = _mm512_reduce_max_ps(m);
        const __m512 shift = _mm512_set1_ps(max[r]);
        __m512 s = _mm512_setzero_ps();
        float* g = grad == nullptr ? nullptr : grad + (start + r) * vocab;
        for (int64_t c = 0; c < vocab; c += 16) {
          const __mmask16 lanes = ColumnMask(vocab - c);
          const __m512 shifted = _mm512_sub_ps(_mm512_maskz_loadu_ps(lanes, z + c), shift);
          const __m512 e = _mm512_maskz_mov_ps(lanes, pexp(shifted));  // lanes past the row: 0
          s = _mm512_add_ps(s, e);
          if (g != nullptr) _mm512_mask_storeu_ps(g + c, lanes, e);
        }
        sum[r] = _mm512_reduce_add_ps(s);
        if (g != nullptr) {
          const __m512 inverse = _mm512_set1_ps(1.0f / sum[r]);
          for (int64_t c = 0; c < vocab; c += 16) {
            const __mmask16 lanes = ColumnMask(vocab - c);
            _mm512_mask_storeu_ps(g + c, lanes, _mm512_mul_ps(_mm512_maskz_loadu_ps(lanes, g + c), inverse));
          }
          g[label[start + r]] -= 1.0f;
        }
      }
      for (int64_t r = rows; r < 16; ++r) sum[r] = 1.0f;  // unused lanes: log 1
      alignas(64) float log_sum[16];
      _mm512_store_ps(log_sum, plog(_mm512_load_ps(sum)));
      for (int64_t r = 0; r < rows; ++r)
        loss[start + r] = log_sum[r] - (x[(start + r) * vocab + label[start + r]] - max[r]);  // as above
    }
  }

  // The lanes of a 16-column register that hold columns when `left` columns remain.
  static __mmask16 ColumnMask(int64_t left) { return left >= 16 ? __mmask16(0xffff) : __mmask16((1u << left) - 1); }
#endif
};

REGISTER_KERNEL_BUILDER(Name("DeepRnnSoftmaxCrossEntropy").Device(tensorflow::DEVICE_CPU), SoftmaxCrossEntropyOp);

#define DEEP_RNN_REGISTER_KERNELS(T)                                                                               \
  REGISTER_KERNEL_BUILDER(Name("DeepRnnGruSequence").Device(tensorflow::DEVICE_CPU).TypeConstraint<T>("T"),        \
                          GruSequenceOp<T>);                                                                       \
  REGISTER_KERNEL_BUILDER(Name("DeepRnnGruSequenceGrad").Device(tensorflow::DEVICE_CPU).TypeConstraint<T>("T"),    \
                          GruSequenceGradOp<T>);                                                                   \
  REGISTER_KERNEL_BUILDER(Name("DeepRnnLstmSequence").Device(tensorflow::DEVICE_CPU).TypeConstraint<T>("T"),       \
                          LstmSequenceOp<T>);                                                                      \
  REGISTER_KERNEL_BUILDER(Name("DeepRnnLstmSequenceGrad").Device(tensorflow::DEVICE_CPU).TypeConstraint<T>("T"),   \
                          LstmSequenceGradOp<T>);                                                                  \
  REGISTER_KERNEL_BUILDER(Name("DeepRnnLookupGrad").Device(tensorflow::DEVICE_CPU).TypeConstraint<T>("T"),         \
                          LookupGradOp<T>);

DEEP_RNN_REGISTER_KERNELS(float)
DEEP_RNN_REGISTER_KERNELS(bfloat16)

}  // namespace deep_rnn
