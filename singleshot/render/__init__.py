"""Pictures made from models, runs and data sets, as PIL images or PNG files.

- :mod:`singleshot.render.draw`: detections drawn on images (boxes, class names, scores), image grids;
- :mod:`singleshot.render.pr`: precision-recall curves of an evaluation;
- :mod:`singleshot.render.curves`: training curves (loss terms, learning rate, validation mAP);
- :mod:`singleshot.render.coverage`: object sizes over default-box sizes, uncovered objects marked.
"""
