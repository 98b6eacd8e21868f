"""FCOS math and the one forward pass: locations, box coding, targets,
losses, post-processing, NMS, and the forward / eval functions under
training, evaluation, prediction and export."""
