"""ONNX export (jax2onnx), for ONNX Runtime and TensorRT.

jax2onnx 0.13 (the version that installs beside this project's pins)
cannot express our NMS: its greedy `while_loop` writes the kept index with
a batched scatter, which has no ONNX lowering there. So the artifact is

  1. jax2onnx: normalisation, model, each level's top-k candidates, box
     decoding and clipping to the resized image (`postprocess` up to NMS,
     the same functions), giving boxes [1, N, 4] in canvas pixels and the
     class-masked scores [1, C, N] (-1 off a box's class and for empty
     slots), plus the rescale factors to original pixels;
  2. ONNX's own NonMaxSuppression (per class, IoU threshold cfg.inference.nms_iou,
     up to K per class), then TopK of the kept scores over all classes (K =
     max_detections), Gather, rescale and clip to the original image, and
     padding to the fixed [1, K] outputs with `valid`.

What differs from the JAX model: ONNX's NMS decides `inter / union >
t` where ours decides `inter > t * union` (the same except at float
rounding on the threshold), and equal scores may be ordered differently by
TopK than ours. A fixed batch size: jax2onnx 0.13 cannot lower the top-k
fast path's index arithmetic with a symbolic batch. Float32 only: ONNX
Runtime's CPU kernels have no bfloat16 convolutions; TensorRT users build
reduced-precision engines from the float32 graph (its --fp16/--bf16).
The signature is the package's: images, image_hw, orig_hw -> boxes,
scores, classes, valid.
"""

from __future__ import annotations

import contextlib
import io
import logging

import jax
import jax.numpy as jnp
import numpy as np

from fcos_jax.core import postprocess
from fcos_jax.export import serving
from fcos_jax.core import detect
from fcos_jax.model.config import ModelConfig
from fcos_jax.core.locations import compute_locations

OPSET = 23


def candidates_function(cfg: ModelConfig, params, canvas_hw):
  """fn(images, image_hw, orig_hw) -> (boxes [B, N, 4] canvas pixels,
  class-masked scores [B, C, N], scale [B, 4], orig_hi [B, 4]): the
  post-processing of `fcos_jax.core.postprocess.postprocess` before its NMS."""
  locations = compute_locations(tuple(canvas_hw), cfg)

  def fn(images, image_hw, orig_hw):
    # Without stop_gradient ops: jax2onnx 0.13 lowers a stop_gradient of a
    # constant (the frozen BatchNorms and stages) to a value ONNX Runtime
    # cannot find; without gradients the values are the same.
    outputs = detect.head_outputs(params, images, image_hw, cfg,
                                  stop_gradients=False)
    cls, reg, ctr = (outputs.cls_logits, outputs.box_regression,
                     outputs.centerness)
    loc_max = cls.max(axis=-1)
    per_level = [
        postprocess.level_candidates(
            cls, reg, ctr, loc_max, locations.points, locations.strides,
            locations.level_slice(level), cfg)
        for level in range(cfg.num_levels)]
    boxes, scores, classes, valid = (jnp.concatenate(x, axis=1)
                                     for x in zip(*per_level))
    hw = jnp.asarray(image_hw).astype(jnp.float32)
    hi = jnp.stack([hw[:, 1], hw[:, 0]] * 2, axis=-1)[:, None, :]
    boxes = jnp.clip(boxes, 0.0, hi)
    onehot = classes[:, None, :] == jnp.arange(cfg.num_classes)[None, :, None]
    masked = jnp.where(onehot & valid[:, None, :], scores[:, None, :], -1.0)
    orig = jnp.asarray(orig_hw).astype(jnp.float32)
    ratio = orig / hw
    scale = jnp.stack([ratio[:, 1], ratio[:, 0]] * 2, axis=-1)
    orig_hi = jnp.stack([orig[:, 1], orig[:, 0]] * 2, axis=-1)
    return boxes, masked.astype(jnp.float32), scale, orig_hi

  return fn


@contextlib.contextmanager
def _jax2onnx_compat():
  """jax2onnx 0.13 against jax 0.10 and our flax calls: its stack batching
  rule reads `jax.interpreters.batching.not_mapped` (None; gone from jax's
  public module), and its flax max_pool patch takes the window only by
  keyword (flax's own takes it positionally, as our ResNet calls it) and
  treats explicit padding pairs as VALID. (Its stop_gradient of a constant
  references a value ONNX Runtime cannot find: `candidates_function`
  traces the model without those ops.)"""
  import jax.interpreters.batching as batching  # pylint: disable=import-outside-toplevel
  from jax2onnx.plugins.flax.linen import max_pool as mp  # pylint: disable=import-outside-toplevel
  had = "not_mapped" in vars(batching)
  if not had:
    batching.not_mapped = None
  original = mp.MaxPoolPlugin.__dict__["_make_patch"]

  def _make_patch(cls, orig):
    inner = original.__func__(cls, orig)

    def patched(x, window_shape, strides=None, padding="VALID"):
      if not isinstance(padding, str):  # Explicit pairs: its patch would
        # read them as VALID. Pad with -inf (max's identity, as flax does).
        pads = [(0, 0)] + [tuple(p) for p in padding] + [(0, 0)] * (
            x.ndim - 1 - len(padding))
        x = jnp.pad(x, pads, constant_values=-jnp.inf)
        padding = "VALID"
      return inner(x, window_shape=window_shape, strides=strides,
                   padding=padding)

    return patched

  mp.MaxPoolPlugin._make_patch = classmethod(_make_patch)  # pylint: disable=protected-access
  try:
    yield
  finally:
    mp.MaxPoolPlugin._make_patch = original  # pylint: disable=protected-access
    if not had:
      del batching.not_mapped


def _nms_tail(cfg: ModelConfig, batch: int, num_candidates: int):
  """The ONNX nodes from (cand_boxes [B, N, 4], cand_scores [B, C, N],
  scale [B, 4], orig_hi [B, 4]) to the fixed-size outputs [B, K].

  NonMaxSuppression gives the kept (image, class, candidate) triples; their
  scores are scattered into a [B, C, N] grid of -1, whose top K per image
  (over classes x candidates) are the detections: empty slots stay -1 and
  become `valid = False`."""
  from onnx import TensorProto, helper  # pylint: disable=import-outside-toplevel
  b, n_cand, c = int(batch), int(num_candidates), int(cfg.num_classes)
  k = int(cfg.inference.max_detections)
  top = min(k, c * n_cand)  # TopK needs K <= C * N; the rest is padding.
  const = lambda name, value, dtype=np.int64: helper.make_tensor(
      name, helper.np_dtype_to_tensor_dtype(np.dtype(dtype)),
      np.shape(value), np.asarray(value, dtype).ravel().tolist())
  inits = [
      const("t_max_per_class", [k]),
      const("t_iou", [float(cfg.inference.nms_iou)], np.float32),
      const("t_score_thresh", [-0.5], np.float32),
      const("t_minus_one", [-1.0], np.float32),
      const("t_flat_shape", [b, c * n_cand]), const("t_top", [top]),
      const("t_n", n_cand), const("t_gather_shape", [b, top, 4]),
      const("t_last_axis", [-1]), const("t_one_axis", [1]),
      const("t_zero_f", 0.0, np.float32), const("t_zero_i", 0, np.int32),
  ]
  node = helper.make_node
  nodes = [
      node("NonMaxSuppression", ["cand_boxes", "cand_scores",
                                 "t_max_per_class", "t_iou",
                                 "t_score_thresh"], ["sel"]),  # [S, 3]
      node("GatherND", ["cand_scores", "sel"], ["sel_scores"]),  # [S]
      node("Shape", ["cand_scores"], ["grid_shape"]),
      node("Expand", ["t_minus_one", "grid_shape"], ["empty_grid"]),
      node("ScatterND", ["empty_grid", "sel", "sel_scores"], ["kept"]),
      node("Reshape", ["kept", "t_flat_shape"], ["kept_flat"]),
      node("TopK", ["kept_flat", "t_top"], ["top_scores", "top_i"], axis=1,
           largest=1, sorted=1),  # [B, top]
      node("Div", ["top_i", "t_n"], ["top_cls"]),  # Flat = class * N + box.
      node("Mod", ["top_i", "t_n"], ["top_box"]),
      node("Unsqueeze", ["top_box", "t_last_axis"], ["top_box3"]),
      node("Expand", ["top_box3", "t_gather_shape"], ["gather_i"]),
      node("GatherElements", ["cand_boxes", "gather_i"], ["kb"], axis=1),
      node("Unsqueeze", ["scale", "t_one_axis"], ["scale3"]),  # [B, 1, 4]
      node("Unsqueeze", ["orig_hi", "t_one_axis"], ["orig_hi3"]),
      node("Mul", ["kb", "scale3"], ["kb_scaled"]),
      node("Max", ["kb_scaled", "t_zero_f"], ["kb_lo"]),
      node("Min", ["kb_lo", "orig_hi3"], ["kb_clip"]),
  ]
  if top < k:  # Fewer slots than K: pad with empty (-1) detections.
    nodes += [node("Pad", ["top_scores", "t_pad2", "t_minus_one_s"],
                   ["all_scores"]),
              node("Pad", ["kb_clip", "t_pad3", "t_zero_fs"], ["all_boxes"]),
              node("Pad", ["top_cls", "t_pad2", "t_zero_l"], ["all_cls"])]
    inits += [const("t_pad2", [0, 0, 0, k - top]),
              const("t_pad3", [0, 0, 0, 0, k - top, 0]),
              const("t_zero_l", 0), const("t_zero_fs", 0.0, np.float32),
              const("t_minus_one_s", -1.0, np.float32)]
  else:
    nodes += [node("Identity", ["top_scores"], ["all_scores"]),
              node("Identity", ["kb_clip"], ["all_boxes"]),
              node("Identity", ["top_cls"], ["all_cls"])]
  nodes += [
      node("Greater", ["all_scores", "t_score_thresh"], ["valid"]),
      node("Unsqueeze", ["valid", "t_last_axis"], ["valid3"]),
      node("Where", ["valid3", "all_boxes", "t_zero_f"], ["boxes"]),
      node("Where", ["valid", "all_scores", "t_zero_f"], ["scores"]),
      node("Cast", ["all_cls"], ["cls32"], to=TensorProto.INT32),
      node("Where", ["valid", "cls32", "t_zero_i"], ["classes"]),
  ]
  outputs = [
      helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [b, k, 4]),
      helper.make_tensor_value_info("scores", TensorProto.FLOAT, [b, k]),
      helper.make_tensor_value_info("classes", TensorProto.INT32, [b, k]),
      helper.make_tensor_value_info("valid", TensorProto.BOOL, [b, k]),
  ]
  return nodes, inits, outputs


# The packages of the ONNX artifact: the `export` extra of pyproject.toml.
PACKAGES = ("onnx", "onnxruntime", "jax2onnx")


def require() -> None:
  """One MissingExtraError naming the `export` extra when a package of the
  ONNX artifact is missing: checked before any artifact is written."""
  from fcos_jax import errors  # pylint: disable=import-outside-toplevel
  errors.require_extra("export", "The ONNX export (--formats=onnx)",
                       *PACKAGES)


def export(cfg: ModelConfig, params, canvas_hw, path: str | None = None, *,
           batch: int = 1):
  """The ONNX model (ModelProto) for one canvas and a fixed batch size;
  written to `path` when given."""
  import onnx  # pylint: disable=import-outside-toplevel
  from jax2onnx import to_onnx  # pylint: disable=import-outside-toplevel
  from onnx import helper  # pylint: disable=import-outside-toplevel
  params = serving.as_numpy_params(params)
  fn = candidates_function(cfg, params, canvas_hw)
  # jax2onnx 0.13 prints "DEBUG: ..." lines for every flax Conv: shown only
  # when its logger is at DEBUG (the commands' --verbosity=1).
  chatty = logging.getLogger("jax2onnx").isEnabledFor(logging.DEBUG)
  with _jax2onnx_compat(), (contextlib.nullcontext() if chatty else
                            contextlib.redirect_stdout(io.StringIO())):
    head = to_onnx(fn, serving.input_specs(canvas_hw, batch), opset=OPSET,
                   input_names=list(serving.INPUT_NAMES),
                   output_names=["cand_boxes", "cand_scores", "scale",
                                 "orig_hi"])
  num_candidates = [d.dim_value for d in head.graph.output[0].type.tensor_type
                    .shape.dim][1]
  nodes, inits, outputs = _nms_tail(cfg, batch, num_candidates)
  graph = head.graph
  graph.node.extend(nodes)
  graph.initializer.extend(inits)
  del graph.output[:]
  graph.output.extend(outputs)
  opsets = [o for o in head.opset_import if o.domain not in ("", "ai.onnx")]
  model = helper.make_model(graph, opset_imports=[
      helper.make_opsetid("", OPSET)] + opsets, producer_name="fcos_jax")
  model.ir_version = head.ir_version
  onnx.checker.check_model(model)
  if path:
    from fcos_jax import storage  # pylint: disable=import-outside-toplevel
    storage.write_bytes_atomic(path, model.SerializeToString())
  return model


def session_log_severity() -> int:
  """ONNX Runtime's log severity for our sessions: errors only (3; its
  warnings, e.g. on initializers the graph does not use, say nothing about
  the model's outputs), unless the "onnxruntime" logger is at INFO or below
  (the commands' --verbosity=1): then ONNX Runtime's default, warnings (2)."""
  return 2 if logging.getLogger("onnxruntime").isEnabledFor(logging.INFO) else 3


def load(path: str):
  """fn(images, image_hw, orig_hw) -> dict of NumPy outputs, from a fresh
  onnxruntime.InferenceSession (CPU)."""
  import onnxruntime as ort  # pylint: disable=import-outside-toplevel
  from fcos_jax import storage  # pylint: disable=import-outside-toplevel
  options = ort.SessionOptions()
  options.log_severity_level = session_log_severity()
  session = ort.InferenceSession(storage.read_bytes(path), options,
                                 providers=["CPUExecutionProvider"])
  names = [o.name for o in session.get_outputs()]

  def fn(images, image_hw, orig_hw):
    out = session.run(None, {
        "images": np.asarray(images, np.uint8),
        "image_hw": np.asarray(image_hw, np.int32),
        "orig_hw": np.asarray(orig_hw, np.int32)})
    return dict(zip(names, out))

  return fn

