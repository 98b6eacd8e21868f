"""Benchmarks: `python -m benchmarks` prints where we stand against
torchvision's FCOS and the hardware (see BENCHMARKS.md); the single-purpose
scripts (bench_loss, bench_postprocess, bench_input, bench_coco_eval,
bench_model) also run on their own."""
