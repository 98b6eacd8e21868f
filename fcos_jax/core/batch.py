"""The batch format shared by the input pipeline, the steps and the tests.

A batch is a dict of arrays with a leading batch axis B. Images share one
fixed canvas (H, W) per batch; boxes are padded to M = `max_boxes`.

  image        uint8   [B, H, W, 3]  RGB, resized image at the top-left,
                                     zeros elsewhere (normalised on device).
  image_hw     int32   [B, 2]        (h, w) of the resized image in the canvas.
  orig_hw      int32   [B, 2]        (h, w) of the original image.
  boxes        float32 [B, M, 4]     (x0, y0, x1, y1), canvas pixels.
  classes      int32   [B, M]        contiguous labels in [0, num_classes).
  box_valid    bool    [B, M]        real (not padding) boxes.
  is_crowd     bool    [B, M]        COCO iscrowd; never a positive.
  image_id     int32   [B]           dataset image id (COCO id).
  example_valid bool   [B]           False for evaluation padding examples.
"""

from __future__ import annotations

