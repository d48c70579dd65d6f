"""The `native` form's kernels: trainer/kernels/rnn_sequence.cc built for this CPU and TensorFlow, and their gradients.

One op runs a whole GRU or LSTM layer over the sequence (forward, and backward in its gradient op), so a
training step has a few dozen TF ops instead of thousands; one more computes the loss and its gradient.
Built on first use (or by `make`: `python -m trainer.native`) into the user's cache directory with the flags
`tf.sysconfig` gives; the library is keyed by source, TensorFlow version and CPU, so each machine builds its own.
Used for training only: exports keep standard ops.

    python -m trainer.build_kernels [--force]   # build (if needed) and print the library's path
"""
from __future__ import annotations

import functools
import hashlib
import os
import platform
import subprocess
import sys
import tempfile

from common import paths

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "kernels", "rnn_sequence.cc")  # package data
OP_TYPES = {"gru": "DeepRnnGruSequence", "lstm": "DeepRnnLstmSequence"}


class NativeUnavailable(RuntimeError):
    """The kernels cannot be built or loaded here (the message says why)."""


def cpu_fingerprint() -> str:
    """The CPU's model name and instruction-set flags: what -march=native compiles for."""
    model, flags = platform.processor(), ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key = line.split(":")[0].strip()
                if key == "model name" and not model:
                    model = line.split(":", 1)[1].strip()
                elif key == "flags":
                    flags = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{platform.machine()} {model} {flags}"


def _compile_flags() -> tuple[list[str], list[str], str]:
    import tensorflow as tf

    return tf.sysconfig.get_compile_flags(), tf.sysconfig.get_link_flags(), tf.__version__


def target_flags(cpu_flags: str, march: str = "native") -> list[str]:
    """-march for the CPU, less what TensorFlow's bundled Eigen cannot compile: its AVX512_FP16 packet maths
    (Sapphire Rapids and later) fails to build, and the kernels use no float16."""
    flags = [f"-march={march}"]
    if "avx512_fp16" in cpu_flags.split():
        flags.append("-mno-avx512fp16")
    return flags


def compile_command(output: str, march: str = "native", cpu_flags: str | None = None) -> list[str]:
    """The compiler command that builds the kernels into `output` for this TensorFlow."""
    compile_flags, link_flags, _ = _compile_flags()
    cpu_flags = cpu_fingerprint() if cpu_flags is None else cpu_flags
    return [os.environ.get("CXX", "g++"), "-std=c++17", "-shared", "-fPIC", "-O3", *target_flags(cpu_flags, march),
            "-w", SOURCE, "-o", output, *compile_flags, *link_flags]


def library_path() -> str:
    compile_flags, link_flags, version = _compile_flags()
    try:
        with open(SOURCE, "rb") as f:
            source = f.read()
    except OSError as err:
        raise NativeUnavailable(f"the kernels' source is missing from the installed package ({err})") from None
    key = hashlib.sha256(source + "\0".join([version, cpu_fingerprint(), *compile_flags, *link_flags])
                         .encode()).hexdigest()[:16]
    return os.path.join(paths.kernels_dir(), key, "rnn_sequence.so")


def build(force: bool = False) -> str:
    """Compile the kernels for this CPU and TensorFlow unless already built; returns the library's path.

    Written under a temporary name and renamed, so concurrent builds (tuner workers) never load half a file."""
    path = library_path()
    if os.path.exists(path) and not force:
        return path
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=os.path.dirname(path))
    except OSError as err:
        raise NativeUnavailable(f"cannot write the built kernels ({err}); set DEEP_RNN_KERNELS_DIR") from None
    os.close(fd)
    try:
        proc = subprocess.run(compile_command(tmp), capture_output=True, text=True)
    except OSError as err:
        os.unlink(tmp)
        raise NativeUnavailable(f"no C++ compiler to build the native RNN kernels ({err})") from None
    if proc.returncode != 0:
        os.unlink(tmp)
        raise NativeUnavailable("building the native RNN kernels failed: "
                                + (proc.stderr.strip().splitlines() or ["(no output)"])[-1])
    os.replace(tmp, path)
    return path


@functools.cache
def load():
    """The loaded op library (built first if needed), with its gradients registered; NativeUnavailable if not."""
    import tensorflow as tf

    path = build()
    try:
        library = tf.load_op_library(path)
    except (tf.errors.NotFoundError, OSError) as err:
        raise NativeUnavailable(f"loading {path} failed: {err}") from None
    _register_gradients(library)
    return library


@functools.cache
def has_bf16() -> bool:
    """Whether the kernels here can run their recurrent products in bfloat16 (built with AVX512_BF16)."""
    import ctypes

    try:
        load()
    except NativeUnavailable:
        return False
    return bool(ctypes.CDLL(build()).deep_rnn_has_bf16())


@functools.cache
def uses_amx() -> bool:
    """Whether the kernels' bfloat16 products run on AMX tiles here: built for a CPU with AMX-BF16, Linux granted
    the tile state, and DEEP_RNN_NO_AMX is not set (else they run on AVX512_BF16, same products)."""
    import ctypes

    if not has_bf16():
        return False
    return bool(ctypes.CDLL(build()).deep_rnn_uses_amx())


def available() -> tuple[bool, str]:
    """(True, "") when the kernels load here, else (False, why)."""
    try:
        load()
        return True, ""
    except NativeUnavailable as err:
        return False, str(err)


def _register_gradients(library) -> None:
    import tensorflow as tf

    def previous_states(first, seq):  # [B, H], [T, B, H] → [T·B, H]: the state each step started from
        return tf.reshape(tf.concat([first[None], seq[:-1]], axis=0), [-1, tf.shape(seq)[-1]])

    def kernel_gradient(op, h0, h, d_products):  # Σ_t h_{t-1}ᵀ · d(h_{t-1} U) as one large matmul: [H, G·H]
        states, d_products = previous_states(h0, h), tf.reshape(d_products, [-1, tf.shape(d_products)[-1]])
        if op.get_attr("bf16"):  # as the op's own products: bfloat16 factors, float32 accumulation
            states, d_products = tf.cast(states, tf.bfloat16), tf.cast(d_products, tf.bfloat16)
        return tf.cast(tf.matmul(states, d_products, transpose_a=True), tf.float32)

    @tf.RegisterGradient("DeepRnnGruSequence")
    def _gru_grad(op, dh, _dgates):  # gates is internal to the layer: nothing downstream reads it
        _, _, h0, kernel, _ = op.inputs
        h, gates = op.outputs
        dh = tf.zeros_like(h) if dh is None else dh
        fused = sums_kernel_gradient_in_op(kernel.shape[0])
        dxp, dhp, dh0, d_input_bias, d_recurrent_bias, d_kernel = library.deep_rnn_gru_sequence_grad(
            h0, kernel, h, gates, dh, bf16=op.get_attr("bf16"), T=op.get_attr("T"), kernel_grad=fused)
        return dxp, d_input_bias, dh0, d_kernel if fused else kernel_gradient(op, h0, h, dhp), d_recurrent_bias

    @tf.RegisterGradient("DeepRnnLstmSequence")
    def _lstm_grad(op, dh, dc, _dgates):
        _, _, h0, c0, kernel = op.inputs
        h, c, gates = op.outputs
        dh = tf.zeros_like(h) if dh is None else dh
        dc = tf.zeros_like(c) if dc is None else dc
        fused = sums_kernel_gradient_in_op(kernel.shape[0])
        dxp, dh0, dc0, d_input_bias, d_kernel = library.deep_rnn_lstm_sequence_grad(
            h0, c0, kernel, h, c, gates, dh, dc, bf16=op.get_attr("bf16"), T=op.get_attr("T"), kernel_grad=fused)
        return dxp, d_input_bias, dh0, dc0, d_kernel if fused else kernel_gradient(op, h0, h, dxp)

    @tf.RegisterGradient("DeepRnnSoftmaxCrossEntropy")
    def _cross_entropy_grad(op, dloss, _dbackprop):  # the op computed softmax − one_hot with the loss
        if not op.get_attr("gradient"):
            raise ValueError("DeepRnnSoftmaxCrossEntropy ran without gradient=True; its loss has no gradient")
        return dloss[:, None] * op.outputs[1], None


# Widest layer whose recurrent kernel gradient the backward op sums itself, step by step while each step's
# states and gate gradients are in cache (float32 products); wider layers get one large TensorFlow matmul over
# the whole sequence (bfloat16 with mixed precision), which runs near the CPU's peak at their sizes.
# Measured op against op (backward op plus kernel gradient, 2 cores, AMD EPYC): at 32 units and batch 1024 the
# in-op sum takes the GRU layer's backward from 7.4 to 5.2 ms (LSTM 7.7 to 6.6), at 64 units 15.2 to 13.1 ms;
# from 128 units it is even in float32 and slower in bfloat16 (256 units, batch 64: 14.7 against 12.6 ms).
FUSED_KERNEL_GRADIENT_MAX_UNITS = 64


def sums_kernel_gradient_in_op(units) -> bool:
    """Whether the backward op of a layer with `units` sums its recurrent kernel's gradient itself."""
    return units is not None and units <= FUSED_KERNEL_GRADIENT_MAX_UNITS


def lookup_rows(table, ids):
    """table [V, G], ids [T, B] → [T, B, G]: the first layer's input projection as a row lookup, whose
    gradient (DeepRnnLookupGrad) adds dy's rows into their ids' rows of d_table, each thread a range of columns
    (a one-hot matmul costs V times the adds; a segment sum over a few dozen rows serialises on them)."""
    import tensorflow as tf

    library = load()

    @tf.custom_gradient
    def lookup(table):
        def grad(dy):  # dy [T, B, G] → d_table [V, G]
            return library.deep_rnn_lookup_grad(tf.reshape(tf.cast(ids, tf.int32), [-1]),
                                                tf.reshape(dy, [-1, tf.shape(dy)[-1]]), tf.shape(table)[0])

        return tf.gather(table, ids), grad

    return lookup(table)


def softmax_cross_entropy(labels, logits, gradient: bool = True):
    """labels [..., ] int, logits [..., V] float32 → per-token cross-entropy [...] in one op
    (DeepRnnSoftmaxCrossEntropy) that, with gradient, also writes the gradient softmax − one_hot for the
    backward pass; gradient=False (metrics) skips it, and differentiating that op is an error."""
    import tensorflow as tf

    vocab = tf.shape(logits)[-1]
    loss, _ = load().deep_rnn_softmax_cross_entropy(tf.reshape(logits, [-1, vocab]),
                                                     tf.reshape(tf.cast(labels, tf.int32), [-1]), gradient=gradient)
    return tf.reshape(loss, tf.shape(labels))


def project(x, kernel, bf16: bool = False):
    """x [T, B, d] → x W [T, B, G] as one large matmul (the kernels add the bias), in bfloat16 with bf16: the
    kernels take it and give its gradient back in bfloat16, so no whole-tensor cast runs on either side."""
    import tensorflow as tf

    dtype = tf.bfloat16 if bf16 else tf.float32
    steps, batch = tf.shape(x)[0], tf.shape(x)[1]
    y = tf.matmul(tf.reshape(tf.cast(x, dtype), [-1, tf.shape(x)[-1]]), tf.cast(kernel, dtype))  # [T·B, G]
    return tf.reshape(y, [steps, batch, -1])


def run_layer(weights, xp, states, bf16: bool = False):
    """One layer over the whole sequence: xp [T, B, gates] (x W, float32 or bfloat16; the op adds the input
    bias), states [[B, H], ...] → (outputs [T, B, H], final states), float32; with bf16 the recurrent products
    round their factors to bfloat16 (mixed precision; needs has_bf16())."""
    import tensorflow as tf

    library = load()
    states = [tf.cast(s, tf.float32) for s in states]
    kernel = tf.cast(weights.recurrent_kernel, tf.float32)
    input_bias = tf.cast(weights.input_bias, tf.float32)
    if weights.kind == "gru":
        h, _ = library.deep_rnn_gru_sequence(xp, input_bias, states[0], kernel,
                                             tf.cast(weights.recurrent_bias, tf.float32), bf16=bf16)
        return h, [h[-1]]
    if weights.kind == "lstm":
        h, c, _ = library.deep_rnn_lstm_sequence(xp, input_bias, states[0], states[1], kernel, bf16=bf16)
        return h, [h[-1], c[-1]]
    raise ValueError(f"the native form has no kernel for the {weights.kind!r} cell (gru and lstm have)")


if __name__ == "__main__":
    print("error: the kernels are built by `python -m trainer.build_kernels` (or `deep-rnn kernels`)", file=sys.stderr)
    sys.exit(2)
