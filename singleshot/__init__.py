"""singleshot: SSD, the Single Shot MultiBox Detector (Liu et al., ECCV 2016), on PyTorch.

The package is layered like the detector itself::

    priors      default boxes (scales, aspect ratios, steps, clipping)
    boxes       box formats, IoU, encode/decode against priors
    matching    ground truth -> prior assignment
    loss        MultiBox loss with hard negative mining
    postprocess softmax, thresholds, class-wise NMS
    models      VGG16 SSD300/SSD512, SSDLite, a small CPU model; zoo, checkpoints
    data        VOC / COCO / YOLO readers, synthetic data, the paper's augmentation
    metrics     VOC07 / VOC / COCO mean average precision
"""

__version__ = "0.1.0"
