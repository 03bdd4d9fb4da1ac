"""Class names of every dataset, the segmentation ignore label and ImageNet's normalisation
statistics.
"""

from __future__ import annotations

FASHION_MNIST_CLASSES: tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)


DIGITS_CLASSES: tuple[str, ...] = tuple(str(d) for d in range(10))


CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)


SCENE_CLASSES: tuple[str, ...] = ("background", *FASHION_MNIST_CLASSES)


IGNORE_INDEX = 255


IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)


IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
