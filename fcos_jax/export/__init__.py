"""Export of the detector for serving: normalisation + model +
post-processing with NMS, for one fixed canvas, as

- `jax.export` serialized StableHLO (`stablehlo.py`): re-loadable and
  callable from any JAX program without this project's model code;
- a TF SavedModel (`saved_model.py`, jax2tf): TF Serving, TF Lite
  converters, any TF program; also one that takes a single image of any
  size and does the resize inside (`saved_model.export_images`);
- ONNX (`onnx_export.py`, jax2onnx + ONNX's NonMaxSuppression): ONNX
  Runtime and TensorRT; float32, a fixed batch size.

Every per-canvas artifact has the signature of `serving.serving_function`:

  images   uint8 [B, H, W, 3]  RGB, each image resized by the run's rule and
                               put at the top-left of the H x W canvas,
                               zeros elsewhere (fcos_jax.inference.images.
                               Resizer does this);
  image_hw int32 [B, 2]        (h, w) of the resized image in the canvas;
  orig_hw  int32 [B, 2]        (h, w) of the original image;
->
  boxes    float32 [B, K, 4]   (x0, y0, x1, y1) in original pixels;
  scores   float32 [B, K];  classes int32 [B, K];  valid bool [B, K]
                               (K = model.inference.max_detections, best first).

`fcos-export --workdir DIR --out OUT` (fcos_jax.cli.export) writes every format
for each of the run's canvases, in float32 and bfloat16.
"""
