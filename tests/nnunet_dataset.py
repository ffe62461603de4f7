"""A minimal nnU-Net dataset for planning: dataset.json and dataset_fingerprint.json, no images."""

from __future__ import annotations

import json
from pathlib import Path

NAME = "Dataset987_Memprobe"


def make_dataset(
    root: Path,
    spacings: list[list[float]],
    shapes: list[list[int]],
    channels: int = 1,
    classes: int = 2,
) -> tuple[Path, Path]:
    """Write nnUNet_raw and nnUNet_preprocessed folders under ``root``; return both."""
    return write_dataset(root, NAME, spacings, shapes, channels, classes)


def write_dataset(
    root: Path,
    name: str,
    spacings: list[list[float]],
    shapes: list[list[int]],
    channels: int = 1,
    classes: int = 2,
) -> tuple[Path, Path]:
    """Write dataset ``name`` under ``root``/nnUNet_raw and ``root``/nnUNet_preprocessed; return both."""
    raw, preprocessed = root / "nnUNet_raw", root / "nnUNet_preprocessed"
    (raw / name).mkdir(parents=True)
    (preprocessed / name).mkdir(parents=True)
    cases = {
        f"case{i}": {
            "images": [f"imagesTr/case{i}_{c:04d}.nii.gz" for c in range(channels)],
            "label": f"labelsTr/case{i}.nii.gz",
        }
        for i in range(len(spacings))
    }
    labels = {"background": 0, **{f"class{i}": i for i in range(1, classes)}}
    dataset = {
        "channel_names": {str(c): f"MRI{c}" for c in range(channels)},
        "labels": labels,
        "numTraining": len(spacings),
        "file_ending": ".nii.gz",
        "overwrite_image_reader_writer": "SimpleITKIO",
        "dataset": cases,
    }
    (raw / name / "dataset.json").write_text(json.dumps(dataset))
    intensity = {
        "mean": 0.0,
        "median": 0.0,
        "std": 1.0,
        "min": -1.0,
        "max": 1.0,
        "percentile_99_5": 1.0,
        "percentile_00_5": -1.0,
    }
    fingerprint = {
        "spacings": spacings,
        "shapes_after_crop": shapes,
        "median_relative_size_after_cropping": 1.0,
        "foreground_intensity_properties_per_channel": {str(c): intensity for c in range(channels)},
    }
    (preprocessed / name / "dataset_fingerprint.json").write_text(json.dumps(fingerprint))
    return raw, preprocessed
