"""Every knob of the input pipeline, in one commented ConfigDict.

Training configs import `default_data_config()` and change a few fields.
"""

from __future__ import annotations

import ml_collections


def default_data_config() -> ml_collections.ConfigDict:
  """The official FCOS input recipe (short side 800, long side <= 1333)."""
  c = ml_collections.ConfigDict()

  # Where the data comes from: "synthetic" (generated shapes, made on first
  # use), "coco_format" (any annotations JSON + image folder) or "tfds"
  # (TFDS coco/2017, exported once to COCO format in `tfds.export_dir`).
  c.source = "synthetic"

  # --- coco_format source ---------------------------------------------------
  c.coco = ml_collections.ConfigDict()
  c.coco.train_json = ""  # instances JSON of the training split.
  c.coco.train_images = ""  # Folder that `file_name` in train_json is relative to.
  c.coco.val_json = ""  # instances JSON of the evaluation split (also the
  # ground truth for COCO evaluation).
  c.coco.val_images = ""  # Folder of the evaluation images.

  # --- tfds source ------------------------------------------------------------
  c.tfds = ml_collections.ConfigDict()
  c.tfds.name = "coco/2017"  # TFDS builder name.
  c.tfds.data_dir = ""  # TFDS data_dir ("" = TFDS default, ~/tensorflow_datasets).
  c.tfds.train_split = "train"
  c.tfds.val_split = "validation"
  # Where each split is exported once as COCO format (encoded images copied
  # unchanged + an instances JSON); "" = <data_dir or ~/tensorflow_datasets>
  # /fcos_jax_export. Needs about the split's size in free disk.
  c.tfds.export_dir = ""
  # A real instances_val2017.json for evaluation ground truth; "" = use the
  # JSON written from the TFDS examples (same boxes, no segmentations).
  c.tfds.val_gt_json = ""

  # --- synthetic source ----------------------------------------------------
  c.synthetic = ml_collections.ConfigDict()
  c.synthetic.dir = "/tmp/fcos_jax_synthetic"  # Made here on first use;
  # remade when the parameters below change.
  c.synthetic.num_train = 2000  # Training images.
  c.synthetic.num_val = 200  # Held-out evaluation images.
  # Side of the square images, or (H, W), pixels.
  c.synthetic.image_size = ml_collections.FieldReference(256, field_type=object)
  c.synthetic.seed = 0  # Generator seed (the dataset is a function of it).

  # --- Geometry ----------------------------------------------------------------
  # Short side after resizing, pixels: an int, or (lo, hi) for multi-scale
  # training (drawn uniformly from the integers lo..hi per training image;
  # evaluation uses hi). Official 1x: 800; 2x: (640, 800).
  c.min_size = ml_collections.FieldReference(800, field_type=object)
  c.max_size = 1333  # Cap on the long side after resizing, pixels.
  # Canvas buckets (H, W); multiples of 32. Each image goes to the smallest
  # canvas that holds it (landscape images to the wide one, portrait to the
  # tall one); every batch uses one canvas on all processes.
  c.canvases = ml_collections.FieldReference(((800, 1344), (1344, 800)),
                                            field_type=object)
  c.max_boxes = 100  # M: boxes kept per image (extra ones are counted, logged).

  # --- Augmentation and filtering ---------------------------------------------
  c.flip_prob = 0.5  # Horizontal flip probability in training.
  c.skip_empty_train = True  # Skip training images with no (non-crowd) box.
  # Bad images (missing, corrupt) and bad annotations: False = stop with an
  # error naming the file / annotation; True = skip them, counted and logged.
  c.skip_bad_examples = False
  # An annotation's file_name must name a file inside its image folder: a
  # "../val/x.jpg" or "/abs/x.jpg" is refused (it would read another
  # split's or anyone's files). True allows such paths, for every source.
  c.allow_outside_paths = False

  # --- Performance and order ------------------------------------------------
  c.num_parallel_calls = -1  # Parallel decode/augment calls; -1 = AUTOTUNE.
  c.prefetch = 2  # Batches prepared ahead of the training loop.
  c.shuffle_seed = 0  # Seed of the per-epoch shuffles, flips, scales, buckets.
  c.private_threadpool_size = 0  # tf.data threads; 0 = TF default.
  return c
