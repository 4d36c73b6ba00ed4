"""Datasets: ImageFolder layout, deterministic splits, and the synthetic two-city generator."""

from edgetl.data.imagefolder import IMAGE_SUFFIXES, ImageFolder, LoadedImages, load_images, scan
from edgetl.data.split import split_train_val

__all__ = ["IMAGE_SUFFIXES", "ImageFolder", "LoadedImages", "load_images", "scan", "split_train_val"]
