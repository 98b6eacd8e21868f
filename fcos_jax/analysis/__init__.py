"""The paper's own measurements on any dataset: best possible recall and
ambiguous locations of an assignment rule (Tables 1-2), RetinaNet's anchors
for comparison, class-agnostic precision-recall curves (Figs. 4-6) and
centre-ness maps (Figs. 3, 8). `analyze.py` is their command line."""
