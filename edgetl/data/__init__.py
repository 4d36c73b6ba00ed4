"""Datasets: ImageFolder layout, deterministic splits, and the synthetic two-city generator."""

from edgetl.data.imagefolder import (
    IMAGE_SUFFIXES,
    ClassCount,
    ImageFolder,
    LoadedImages,
    load_images,
    readable_counts,
    scan,
)
from edgetl.data.split import split_train_val

__all__ = ["IMAGE_SUFFIXES", "ClassCount", "ImageFolder", "LoadedImages", "load_images", "readable_counts", "scan",
           "split_train_val"]
