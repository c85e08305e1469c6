"""Class activation maps (Zhou, Khosla, Lapedriza, Oliva & Torralba, "Learning Deep
Features for Discriminative Localization", CVPR 2016) and pictures of feature maps,
filters and CAM overlays.

For a network ``features -> GlobalAvgPool2d -> Linear``, the logit of class ``c`` is
``sum_k w[c, k] * mean(F_k) + b_c``, so ``M_c = sum_k w[c, k] * F_k`` shows where in
the image the evidence for class ``c`` lies. It is upsampled (bilinear) to the input
size.

The pictures need matplotlib (``pip install 'fastconv[plot]'``), imported only when
a picture is drawn, with the non-interactive Agg backend.
"""
import textwrap

import numpy as np

from .layers import GlobalAvgPool2d, Linear, Sequential, Conv2d

__all__ = ["class_activation_map", "bilinear_resize", "save_cam_overlay",
           "save_feature_maps", "save_filters"]


def _split_gap(model):
    """(feature layers, linear layer) of a Sequential ending in GAP + Linear."""
    layers = list(model) if isinstance(model, Sequential) else None
    if layers is None or len(layers) < 2 or not isinstance(layers[-1], Linear) \
            or not isinstance(layers[-2], GlobalAvgPool2d):
        tail = ", ".join(type(m).__name__ for m in (layers or [model])[-2:])
        raise ValueError("class_activation_map: the network must be a Sequential ending in "
                         f"GlobalAvgPool2d then Linear (Zhou et al. 2016); it ends in {tail}")
    return layers[:-2], layers[-1]


def bilinear_resize(maps, size):
    """Resize (..., h, w) maps to (..., H, W) by bilinear interpolation with
    half-pixel centres (``torch.nn.functional.interpolate(mode='bilinear',
    align_corners=False)``)."""
    maps = np.asarray(maps, dtype=np.float64)
    H, W = size
    h, w = maps.shape[-2:]

    def axis(n_out, n_in):
        src = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
        src = np.clip(src, 0, n_in - 1)
        lo = np.floor(src).astype(np.int64)
        hi = np.minimum(lo + 1, n_in - 1)
        return lo, hi, src - lo

    r0, r1, fr = axis(H, h)
    c0, c1, fc = axis(W, w)
    top = maps[..., r0, :] * (1 - fr)[:, None] + maps[..., r1, :] * fr[:, None]
    return top[..., c0] * (1 - fc) + top[..., c1] * fc


def class_activation_map(model, x, class_index=None):
    """Class activation map of ``class_index`` for the image(s) ``x``.

    Parameters
    ----------
    model : Sequential ending in ``GlobalAvgPool2d`` then ``Linear``
    x : ndarray (C, H, W) for one image or (N, C, H, W)
    class_index : int, array of N ints, or None for each image's predicted class

    Returns
    -------
    ndarray (H, W) for one image, (N, H, W) for a batch, float64: ``sum_k w[c, k] F_k``
    upsampled bilinearly to the input size (not normalised; the bias is left out).
    """
    features, linear = _split_gap(model)
    x = np.asarray(x)
    single = x.ndim == 3
    if single:
        x = x[None]
    if x.ndim != 4:
        raise ValueError(f"class_activation_map: expected an image (C, H, W) or a batch "
                         f"(N, C, H, W), got shape {x.shape}")
    x = x.astype(linear.weight.data.dtype, copy=False)
    was_training = model.training
    model.eval()
    try:
        fmap = x
        for layer in features:
            fmap = layer.forward(fmap)
        logits = model[-1].forward(model[-2].forward(fmap))
    finally:
        model.train(was_training)
    N = x.shape[0]
    if class_index is None:
        # the predicted class; with a single output (a binary logit) its only weight row
        cls = logits.argmax(axis=1) if logits.shape[1] > 1 else np.zeros(N, np.int64)
    else:
        cls = np.broadcast_to(np.asarray(class_index, dtype=np.int64), (N,))
    if cls.min() < 0 or cls.max() >= linear.out_features:
        raise ValueError(f"class_activation_map: class_index must lie in "
                         f"[0, {linear.out_features}), got {class_index!r}")
    w = linear.weight.data[cls].astype(np.float64)                 # (N, K)
    cam = np.einsum("nk,nkhw->nhw", w, fmap.astype(np.float64))
    cam = bilinear_resize(cam, x.shape[2:])
    return cam[0] if single else cam


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise ImportError("fastconv: drawing pictures needs matplotlib; install it with "
                          "pip install 'fastconv[plot]'  (or pip install matplotlib)") from None
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    return plt


def _image2d(img):
    img = np.asarray(img, dtype=np.float64)
    if img.ndim == 3:
        img = img[0] if img.shape[0] == 1 else np.moveaxis(img, 0, -1)
    return img


def save_cam_overlay(image, cam, path, title=None, alpha=0.45):
    """Save a PNG: the image, and the CAM (scaled to [0, 1]) over it in a heat map."""
    plt = _pyplot()
    img = _image2d(image)
    cam = np.asarray(cam, dtype=np.float64)
    span = cam.max() - cam.min()
    cam01 = (cam - cam.min()) / span if span > 0 else np.zeros_like(cam)
    fig, axes = plt.subplots(1, 2, figsize=(6, 3.2))
    for ax in axes:
        ax.imshow(img, cmap="gray")
        ax.axis("off")
    axes[0].set_title("image")
    axes[1].imshow(cam01, cmap="jet", alpha=alpha, extent=(-0.5, img.shape[1] - 0.5,
                                                           img.shape[0] - 0.5, -0.5))
    axes[1].set_title("class activation map")
    if title:
        fig.suptitle(textwrap.fill(title, 60), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _grid(plt, planes, path, title, cmap):
    n = len(planes)
    cols = int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.6 * rows + 0.4), squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k < n:
            ax.imshow(planes[k], cmap=cmap)
            ax.set_title(str(k), fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def save_feature_maps(model, x, layer_index, path):
    """Save a PNG grid of the feature maps output by layer ``layer_index`` of a
    Sequential for one image ``x`` (C, H, W)."""
    plt = _pyplot()
    x = np.asarray(x)[None].astype(model.parameters()[0].data.dtype, copy=False)
    was_training = model.training
    model.eval()
    try:
        for layer in list(model)[:layer_index + 1]:
            x = layer.forward(x)
    finally:
        model.train(was_training)
    if x.ndim != 4:
        raise ValueError(f"save_feature_maps: layer {layer_index} outputs shape {x.shape}, "
                         f"not feature maps (N, C, H, W)")
    _grid(plt, x[0], path, f"feature maps after layer {layer_index} "
          f"({type(model[layer_index]).__name__})", "viridis")


def save_filters(conv, path):
    """Save a PNG grid of a Conv2d's filters (the first input channel of each)."""
    if not isinstance(conv, Conv2d):
        raise TypeError(f"save_filters: expected a Conv2d, got {type(conv).__name__}")
    plt = _pyplot()
    _grid(plt, conv.weight.data[:, 0], path, f"filters of {conv!r}"[:60], "gray")
