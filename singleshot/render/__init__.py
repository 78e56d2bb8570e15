"""Pictures made from models and runs, as PIL images or PNG files.

- :mod:`singleshot.render.draw`: detections drawn on images (boxes, class names, scores), image grids;
- :mod:`singleshot.render.pr`: precision-recall curves of an evaluation;
- :mod:`singleshot.render.curves`: training curves (loss terms, learning rate, validation mAP).
"""
