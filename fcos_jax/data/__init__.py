"""Input pipeline: sources (synthetic, COCO format, TFDS), TF transforms,
deterministic multi-host tf.data pipelines, and global batch assembly."""
