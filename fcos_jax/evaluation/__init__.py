"""COCO evaluation of fixed-size detections."""
